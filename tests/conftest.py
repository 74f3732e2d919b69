"""Test set-up: 4 fake CPU devices and LLVM -O2 CPU code (set before jax is imported), per-session data and
cache folders, the `gpu` marker, float64 available on request, and helpers.

Isolation: every folder kfjax (or a library it calls) would write outside the test's own tmp_path points
into one temporary folder per test session, set before any test (or module fixture) runs and restored
after the session: KFJAX_DATA (fetched sources and derived sets: the real data are fetched once per
session), KFJAX_CACHE (the CLI's persistent JAX compilation cache), MPLCONFIGDIR (matplotlib's font cache)
and XDG_CACHE_HOME (pip's download cache and the like). kfjax reads these variables when it is called, never
at import. Hypothesis keeps no example database and caches what it parses of the test sources in the
system's temporary folder (HYPOTHESIS_STORAGE_DIRECTORY, set here because it is read during collection).
No test writes into the user's home or the clone.

Accelerators: CPU stays the default backend (the 4 fake devices); tests marked `gpu` run only when jax
also sees a GPU or TPU (start pytest with e.g. JAX_PLATFORMS=cpu,cuda) and are skipped otherwise.
"""

import os
import tempfile

# LLVM -O2 instead of XLA's default -O3 for the CPU code: the suite is dominated by compiling small programs
# (a parameter initialiser compiles in 3 s instead of 20 s, a GAN's float64 step in about half the time) and
# runs no slower (the 3-D DI2IN recipe test: 122 s vs 147 s). Only the LLVM back end changes: the HLO, its
# fusions and buffers are the same, so results agree to round-off, which every tolerance here allows for.
TEST_BACKEND_OPT_LEVEL = 2

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" --xla_backend_optimization_level={TEST_BACKEND_OPT_LEVEL}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_HYPOTHESIS_CACHE = os.path.join(tempfile.gettempdir(), f"kfjax-hypothesis-{os.getuid()}")
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", _HYPOTHESIS_CACHE)

import jax  # noqa: E402
import pytest  # noqa: E402

try:  # bounded, reproducible-on-CI property tests; nothing written into the clone (no example database)
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile(
        "kfjax", database=None, deadline=None, print_blob=True, derandomize=bool(os.environ.get("CI"))
    )
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "kfjax"))
except ImportError:  # hypothesis is a test extra; the property-test files import it themselves
    pass

ISOLATED_FOLDERS = {
    "KFJAX_DATA": "data",
    "KFJAX_CACHE": "cache",
    "MPLCONFIGDIR": "matplotlib",
    "XDG_CACHE_HOME": "xdg-cache",
}


@pytest.fixture(scope="session", autouse=True)
def session_folders(tmp_path_factory):
    """{variable: folder} of the session's KFJAX_DATA, KFJAX_CACHE, MPLCONFIGDIR and XDG_CACHE_HOME."""
    root = tmp_path_factory.mktemp("kfjax-session")
    mp = pytest.MonkeyPatch()
    folders = {}
    for var, name in ISOLATED_FOLDERS.items():
        folders[var] = root / name
        folders[var].mkdir()
        mp.setenv(var, str(folders[var]))
    yield folders
    mp.undo()


def accelerators() -> list:
    """jax devices of a GPU or TPU backend, [] when jax sees none (or only CPUs)."""
    for backend in ("gpu", "tpu"):
        try:
            devices = jax.devices(backend)
        except RuntimeError:  # backend unknown or failed to initialise
            continue
        if devices:
            return devices
    return []


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or accelerators():
        return
    reason = (
        f"needs an accelerator: jax sees only {jax.default_backend()} devices "
        f"(JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!r}; on a GPU machine run with JAX_PLATFORMS=cpu,cuda)"
    )
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def n_devices() -> int:
    assert jax.device_count() == 4, "tests expect 4 fake CPU devices"
    return jax.device_count()


def _train_steps(method, devices, steps, batch, x64=False):
    """(mesh, state, losses) of `steps` jitted train steps of a fresh state of `method` on `batch` (the same batch
    every step) over `devices`; `x64`: batch and state cast to float64 first (run it under jax.enable_x64)."""
    import numpy as np

    from kfjax.train.loop import init_train_state
    from kfjax.train.mesh import make_mesh, shard_batch, to_host
    from kfjax.train.precision import cast_floats
    from kfjax.train.step import make_train_step

    mesh = make_mesh(devices)
    rows = len(next(iter(batch.values())))
    state = init_train_state(method, mesh, method.batch_spec(rows))
    if x64:
        batch, state = cast_floats(batch, np.float64), cast_floats(state, np.float64)
    step = make_train_step(method.train_step, mesh)
    losses = []
    for _ in range(steps):
        state, logs = step(state, shard_batch(batch, mesh))
        losses.append(float(to_host(logs)["loss"]))
    return mesh, state, losses


@pytest.fixture(scope="session")
def train_steps():
    """train_steps(method, devices, steps, batch, x64=False) -> (mesh, state, losses): see `_train_steps`."""
    return _train_steps


@pytest.fixture(scope="session")
def sharded_matches_single(n_devices):
    """check(make_method, rows, steps=2, rtol=1e-7, atol=1e-10, batch=None): `steps` jitted train steps of a fresh
    `make_method()` on one batch (`batch(method)`, default the first `rows` training rows), in float64, give the
    same losses and parameters on all devices as on one (each test's docstring argues its tolerance)."""
    import numpy as np

    from kfjax.train.mesh import to_host

    def run(make_method, rows, steps, devices, batch):
        method = make_method()
        rows_of = batch(method) if batch is not None else method.dataset("train")[np.arange(rows)]
        return _train_steps(method, devices, steps, rows_of, x64=True)

    def check(make_method, rows, steps=2, rtol=1e-7, atol=1e-10, batch=None):
        with jax.enable_x64(True):
            _, single, a = run(make_method, rows, steps, jax.devices()[:1], batch)
            mesh, sharded, b = run(make_method, rows, steps, jax.devices(), batch)
            assert mesh.size == n_devices
            np.testing.assert_allclose(b, a, rtol=rtol)
            for x, y in zip(jax.tree.leaves(to_host(single.params)), jax.tree.leaves(to_host(sharded.params))):
                assert y.dtype == np.float64
                np.testing.assert_allclose(y, x, rtol=rtol, atol=atol)

    return check
