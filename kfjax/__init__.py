"""kfjax: knowledge-fusion methods of deep-learning medical image analysis, with differentiable imaging
physics, in JAX/Flax."""

from kfjax.errors import ConfigError, DataError, InputError, KfjaxError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "InputError", "KfjaxError", "__version__"]
