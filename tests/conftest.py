"""Test-wide setup: 8 simulated CPU devices (before jax is imported), compiles without XLA's
expensive backend passes (compiling, not running, is most of the suite's time; subprocesses
inherit the flags, so programs compared across processes are compiled alike) and a persistent
compile cache."""

import os

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 "
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

_CACHE = os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
