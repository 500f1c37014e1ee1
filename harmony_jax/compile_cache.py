"""JAX's persistent compilation cache for the entry points: a rerun (a resumed run, the next
sample call, a benchmark) loads its compiled programs instead of compiling them again."""

from __future__ import annotations

import os

import jax

DEFAULT_DIR = "~/.cache/harmony_jax/xla"


def enable_compile_cache(directory: str = DEFAULT_DIR) -> None:
    """Caches compiled programs in `directory` ('' leaves the cache off), unless a directory is
    already set (`JAX_COMPILATION_CACHE_DIR`, the test suite's `.jax_cache`): that one wins.
    Takes effect for the compiles after it, so entry points call it first."""
    if directory and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
