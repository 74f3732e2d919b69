"""kfjax.physics.se3 against SciPy (rotations, matrix exponential): round trips, conventions, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm
from scipy.spatial.transform import Rotation

from kfjax.physics import se3

CONVENTIONS = ["XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX"]


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _axis(rng):
    n = rng.normal(size=3)
    return n / np.linalg.norm(n)


def test_so3_exp_matches_scipy_batched():
    w = np.random.default_rng(0).normal(size=(4, 5, 3))
    r = jax.jit(se3.so3_exp)(w)
    assert r.shape == (4, 5, 3, 3)
    np.testing.assert_allclose(r, Rotation.from_rotvec(w.reshape(-1, 3)).as_matrix().reshape(4, 5, 3, 3), atol=1e-14)


@pytest.mark.parametrize("angle", [0.0, 1e-9, 1e-5, 1e-3, 0.7, 2.5, np.pi - 1e-4, np.pi - 1e-7, np.pi])
def test_so3_log_round_trip_across_angles(angle):
    rng = np.random.default_rng(1)
    for _ in range(5):
        w = angle * _axis(rng)
        back = se3.so3_log(Rotation.from_rotvec(w).as_matrix())
        if angle >= np.pi - 1e-7:  # at pi, w and -w are the same rotation
            np.testing.assert_allclose(se3.so3_exp(back), se3.so3_exp(w), atol=1e-12)
        else:
            np.testing.assert_allclose(back, w, atol=1e-12)


def test_se3_exp_matches_matrix_exponential_and_log_inverts_it():
    rng = np.random.default_rng(2)
    xi = rng.normal(size=(20, 6)) * np.array([1, 1, 1, 50, 50, 50])
    xi[:, :3] *= rng.uniform(0, 1, size=(20, 1))  # angles in [0, ~1.7]
    xi[0, :3] = 0.0
    xi[1, :3] = 1e-8
    t = se3.se3_exp(xi)
    for k in range(len(xi)):
        twist = np.zeros((4, 4))
        twist[:3, :3] = se3.hat(xi[k, :3])
        twist[:3, 3] = xi[k, 3:]
        np.testing.assert_allclose(t[k], expm(twist), atol=1e-10)
    np.testing.assert_allclose(se3.se3_log(t), xi, atol=1e-9)


def test_pose_params_round_trip_compose_invert_apply():
    rng = np.random.default_rng(3)
    w, t = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) * 100
    m = se3.pose(w, t)
    w2, t2 = se3.pose_params(m)
    np.testing.assert_allclose(se3.pose(w2, t2), m, atol=1e-12)
    np.testing.assert_allclose(se3.compose(m, se3.invert(m)), np.broadcast_to(np.eye(4), m.shape), atol=1e-12)
    x = rng.normal(size=(6, 10, 3))
    a, b = m, se3.pose(rng.normal(size=(6, 3)), rng.normal(size=(6, 3)))
    np.testing.assert_allclose(se3.apply(se3.compose(a, b), x), se3.apply(a, se3.apply(b, x)), atol=1e-10)
    assert se3.is_rotation(m[:, :3, :3]).all()
    assert not se3.is_rotation(np.diag([1.0, 1.0, -1.0]))


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_euler_matches_scipy_intrinsic_and_round_trips(convention):
    rng = np.random.default_rng(4)
    angles = rng.uniform(-np.pi, np.pi, size=(50, 3))
    angles[:, 1] = rng.uniform(-np.pi / 2 + 1e-3, np.pi / 2 - 1e-3, size=50)
    r = jax.jit(se3.euler_to_matrix, static_argnums=1)(angles, convention)
    np.testing.assert_allclose(r, Rotation.from_euler(convention, angles).as_matrix(), atol=1e-13)
    np.testing.assert_allclose(se3.matrix_to_euler(r, convention), angles, atol=1e-10)


def test_bad_euler_convention_is_an_error():
    with pytest.raises(ValueError, match="convention"):
        se3.euler_to_matrix(np.zeros(3), "ZXZ")


def test_gradients_are_finite_and_exact_at_zero_rotation():
    jac = jax.jacrev(lambda xi: se3.se3_log(se3.se3_exp(xi)))
    for point in (np.zeros(6), np.full(6, 1e-6), np.full(6, 0.3)):
        np.testing.assert_allclose(jac(point), np.eye(6), atol=1e-9)
    g = jax.grad(lambda w: jnp.sum(se3.so3_exp(w) * np.arange(9.0).reshape(3, 3)))(np.zeros(3))
    # d/dw of sum(A * (I + hat(w))) at 0 is vee-like: A[2,1]-A[1,2], A[0,2]-A[2,0], A[1,0]-A[0,1]
    np.testing.assert_allclose(g, [7 - 5, 2 - 6, 3 - 1], atol=1e-12)
