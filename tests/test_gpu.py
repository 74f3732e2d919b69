"""On an accelerator (GPU or TPU): a sharded batch lands on it, the CT projector and its adjoint there match
the CPU, and a DI2IN training step there lowers the loss. Marked `gpu`: skipped where jax sees no accelerator
(tests/conftest.py keeps the 4 fake CPU devices as the default backend; on a GPU machine start pytest with
JAX_PLATFORMS=cpu,cuda so jax sees both). Small: a few seconds on a GPU.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from kfjax.config import apply_overrides
from kfjax.methods.di2in import DI2INConfig, DI2INMethod
from kfjax.physics.geometry import preset
from kfjax.physics.projector import make_projector
from kfjax.physics.rays import adjoint_taps
from kfjax.train.loop import init_train_state
from kfjax.train.mesh import make_mesh, shard_batch, to_host
from kfjax.train.step import make_train_step

pytestmark = pytest.mark.gpu

U32 = 2.0**-24  # float32 unit round-off


@pytest.fixture(scope="module")
def accelerators() -> list:
    """The jax devices of the GPU (or TPU) backend."""
    for backend in ("gpu", "tpu"):
        try:
            devices = jax.devices(backend)
        except RuntimeError:
            continue
        if devices:
            return devices
    pytest.skip(f"needs an accelerator: jax sees only {jax.default_backend()} devices")


def _platforms(x) -> set[str]:
    return {d.platform for d in x.devices()}


def test_sharded_batch_lands_on_the_accelerators(accelerators):
    mesh = make_mesh(accelerators)
    n = len(accelerators)
    batch = {"image": np.arange(2 * n * 6 * 5, dtype=np.float32).reshape(2 * n, 6, 5, 1),
             "id": np.arange(2 * n, dtype=np.int32)}
    placed = shard_batch(batch, mesh)
    for name, x in placed.items():
        assert x.devices() == set(accelerators) and _platforms(x) == {accelerators[0].platform}
        assert sorted(s.data.shape[0] for s in x.addressable_shards) == [2] * n  # split over the batch axis
        np.testing.assert_array_equal(to_host(x), batch[name])


def test_projector_and_adjoint_on_the_accelerator_match_the_cpu(accelerators):
    """Forward and adjoint of the adn_quarter preset, on the accelerator and on the CPU, agree to float32
    round-off: with inputs >= 0 every output is a sum of non-negative products, computed on either device
    with relative error <= (max(H, W) + n_views·taps + 10)·u from accumulation and rounding, plus the weights,
    which the two devices derive from trigonometric functions (a few ulp apart) of coordinates <= 2·max(H, W)
    pixels, so <= 2·max(H, W)·u more; the difference of the two is at most twice that (relative L2)."""
    g = preset("adn_quarter")
    forward, adjoint = make_projector(g)
    rng = np.random.default_rng(0)
    x = rng.random((2, *g.image_shape, 1)).astype(np.float32)
    y = rng.random((2, g.n_views, g.n_det, 1)).astype(np.float32)
    both = jax.jit(lambda x, y: (forward(x), adjoint(y)))
    results = []
    for device in (accelerators[0], jax.devices("cpu")[0]):
        ax, aty = both(jax.device_put(x, device), jax.device_put(y, device))
        assert ax.devices() == {device} and aty.devices() == {device}
        results.append((np.asarray(ax, np.float64), np.asarray(aty, np.float64)))
    tol = 2 * (3 * max(g.image_shape) + g.n_views * adjoint_taps(g) + 10) * U32
    (acc_ax, acc_aty), (cpu_ax, cpu_aty) = results
    for name, a, b in (("forward", acc_ax, cpu_ax), ("adjoint", acc_aty, cpu_aty)):
        rel = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert rel <= tol, f"{name}: relative L2 difference {rel:.2e} > {tol:.2e}"


def test_di2in_steps_on_the_accelerator_lower_the_loss(accelerators):
    cfg = apply_overrides(DI2INConfig(), ["data.spatial_dims=2", "data.size=32", "data.n_train=8",
                                          "data.batch_size=4", "model.channels=4,8,16", "optim.warmup_steps=0",
                                          "optim.schedule=constant"])
    method = DI2INMethod(cfg)
    mesh = make_mesh(accelerators[:1])
    batch = method.dataset("train")[np.arange(4)]
    state = init_train_state(method, mesh, batch)
    step = make_train_step(method.train_step, mesh)
    losses = []
    for _ in range(10):
        state, metrics = step(state, shard_batch(batch, mesh))
        losses.append(float(to_host(metrics)["loss"]))
    assert all(_platforms(leaf) == {accelerators[0].platform} for leaf in jax.tree.leaves(state.params))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.85 * losses[0], losses
