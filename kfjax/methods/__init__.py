"""One module per method; each registers itself with `kfjax.methods.registry.register`.

The contract a method fulfils is `kfjax.train.method.Method`; `kfjax.methods.common` holds the building
blocks several methods share (the supervised step, the two-player GAN update, MAR scoring and correction).
"""

from kfjax.train.method import BaseConfig, Inference, Method, PerCaseMethod, Variables

__all__ = ["BaseConfig", "Inference", "Method", "PerCaseMethod", "Variables"]
