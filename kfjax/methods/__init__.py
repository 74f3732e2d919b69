"""One module per method; each registers itself with `kfjax.registry.register`."""

from kfjax.methods.base import Method

__all__ = ["Method"]
