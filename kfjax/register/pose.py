"""Pose parameters and resampling of 2D/3D registration (world mm, rotations in rad).

The patient motion ``T`` (world -> world) has 6 parameters ``(w, t)``: a rotation vector ``w`` (rad) about
a centre ``c`` (mm) and a translation ``t`` (mm), ``T x = R(w) (x - c) + c + t``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kfjax.errors import InputError
from kfjax.physics import se3

__all__ = ["volume_centre", "transform_from_params", "params_from_transform", "downsample_volume",
           "resize_images"]


def volume_centre(affine, shape):
    """World position (3,) mm of the centre of a volume of ``shape`` (X, Y, Z, ...) under ``affine``."""
    a = np.asarray(affine, np.float64)
    return a[:3, :3] @ ((np.asarray(shape[:3], np.float64) - 1.0) / 2.0) + a[:3, 3]


@jax.jit
def transform_from_params(params, centre):
    """Pose parameters (..., 6) = (rotation vector rad, translation mm) -> (..., 4, 4) world -> world map
    ``x -> R(w) (x - c) + c + t`` with ``c = centre`` (3,) mm. Differentiable."""
    params = jnp.asarray(params)
    c = jnp.asarray(centre).astype(params.dtype)
    r = se3.so3_exp(params[..., :3])
    return se3.from_rt(r, params[..., 3:] + c - jnp.einsum("...ij,j->...i", r, c))


@jax.jit
def params_from_transform(m, centre):
    """Inverse of :func:`transform_from_params`: rigid (..., 4, 4) -> (..., 6) = (w rad, t mm)."""
    m = jnp.asarray(m)
    r, t = se3.to_rt(m)
    c = jnp.asarray(centre).astype(m.dtype)
    return jnp.concatenate([se3.so3_log(r), t - c + jnp.einsum("...ij,j->...i", r, c)], -1)


def downsample_volume(volume, affine, factors):
    """Block-average a volume (X, Y, Z) by integer ``factors`` (3,) -> (volume', affine').

    Trailing voxels that do not fill a block are dropped; ``affine'`` puts each new voxel at the centre of
    its block, so world positions are kept (mm).
    """
    vol = np.asarray(volume)
    f = tuple(int(v) for v in np.broadcast_to(np.asarray(factors), (3,)))
    if vol.ndim != 3 or min(f) < 1:
        raise InputError(f"downsample_volume needs a 3-D volume and factors >= 1, got {vol.shape} and {f}")
    n = [s // k for s, k in zip(vol.shape, f)]
    if min(n) < 1:
        raise InputError(f"factors {f} are larger than the volume {vol.shape}")
    v = vol[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    v = v.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean((1, 3, 5), dtype=np.float64).astype(np.float32)
    s = np.eye(4)
    s[:3, :3] = np.diag(f)
    s[:3, 3] = (np.asarray(f) - 1) / 2.0
    return v, np.asarray(affine, np.float64) @ s


def resize_images(images, height: int, width: int):
    """Images (..., H, W) -> (..., height, width): block means when the sizes divide, else antialiased
    linear resampling. The field of view is kept (pixels grow), as in :meth:`CArm.scaled`."""
    images = jnp.asarray(images)
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    if h % height == 0 and w % width == 0:
        fh, fw = h // height, w // width
        x = images.reshape(images.shape[:-2] + (height, fh, width, fw))
        return x.mean((-3, -1))
    return jax.image.resize(images, images.shape[:-2] + (height, width), "linear", antialias=True)
