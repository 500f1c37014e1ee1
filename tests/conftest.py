"""Test-wide setup: simulated CPU devices (before jax is imported), compiles without XLA's
expensive backend passes (compiling, not running, is most of the suite's time; subprocesses
inherit the flags, so programs compared across processes are compiled alike) and a persistent
compile cache.

`HARMONY_TEST_DEVICES` (default 8) is the number of simulated devices. A test that needs a mesh
of several says so with `@pytest.mark.devices(n)` and is skipped where fewer exist. `make test`
runs the suite in two passes: the marked tests on 8 devices, the rest on one, where a training
step compiles and runs ~1.7x faster than split over 8 simulated devices sharing the same cores.
"""

import os

import pytest

DEVICES = int(os.environ.get("HARMONY_TEST_DEVICES", "8"))
os.environ.setdefault(
    "XLA_FLAGS",
    f"--xla_force_host_platform_device_count={DEVICES} "
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_CACHE = os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("devices")
    n = marker.args[0] if marker is not None else 0
    if jax.device_count() < n:
        pytest.skip(f"needs {n} simulated devices (HARMONY_TEST_DEVICES={n})")
