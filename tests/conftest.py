"""Test set-up: 4 fake CPU devices (set before jax is imported), float64 available on request, and helpers."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def n_devices() -> int:
    assert jax.device_count() == 4, "tests expect 4 fake CPU devices"
    return jax.device_count()
