"""Data: sources, derived datasets, procedural phantoms and the host-side batching pipeline."""

from kfjax.data.pipeline import ArrayDataset, BatchLoader, Dataset, EpochSampler, RoundRobinSampler, Sampler

__all__ = ["ArrayDataset", "BatchLoader", "Dataset", "EpochSampler", "RoundRobinSampler", "Sampler"]
