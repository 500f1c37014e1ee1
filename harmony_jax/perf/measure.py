"""Timing, the device's peak matmul throughput, memory and the table every benchmark prints."""

from __future__ import annotations

import collections
import concurrent.futures
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp

GiB = 1024**3


def median_seconds(fn: Callable[[], Any], steps: int, warmup: int) -> float:
    """Median wall time of `fn()` (blocked until its outputs are ready) after `warmup` calls."""
    return interleaved_medians({"fn": fn}, steps, warmup)["fn"]


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], runs: int, warmup: int
) -> dict[str, float]:
    """Median wall time of each `fn()` (blocked until ready), the functions called in turn run
    after run, so load that comes and goes on a shared machine falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_matmul(steps: int = 10) -> tuple[float, str]:
    """(FLOP/s, description) of a jitted square matmul on the default device: the ceiling MFU is
    measured against, on the same device in the same run. bf16 8192^2 on accelerators (their
    tensor cores' dtype), float32 2048^2 on CPU (XLA:CPU has no fast bf16 matmul)."""
    cpu = jax.default_backend() == "cpu"
    n, dtype = (2048, jnp.float32) if cpu else (8192, jnp.bfloat16)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    seconds = median_seconds(lambda: matmul(a, b), steps, warmup=2)
    return (
        2 * n**3 / seconds,
        f"{jnp.dtype(dtype).name} {n}x{n} matmul on {jax.devices()[0].device_kind}",
    )


def matmul_flops_by_dtype(fn: Callable, *args) -> dict[str, float]:
    """FLOPs of the matrix products `fn(*args)` traces, by operand dtype ('mixed' where the two
    differ): where a compute dtype really applies. A loop body counts once."""
    flops = collections.Counter()

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                a, b = (v.aval for v in eqn.invars)
                (contract, _), _ = eqn.params["dimension_numbers"]
                key = a.dtype.name if a.dtype == b.dtype else "mixed"
                flops[key] += (
                    2.0
                    * math.prod(a.shape[i] for i in contract)
                    * math.prod(eqn.outvars[0].aval.shape)
                )
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return dict(flops)


def peak_memory_bytes() -> int | None:
    """The largest `peak_bytes_in_use` over local devices, or None where the backend keeps no
    statistics (CPU). It is the process's running peak: isolate rows to read one row's."""
    stats = [d.memory_stats() for d in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
    return max(peaks) if peaks else None


def compiled_bytes(compiled) -> int:
    """Bytes one device needs for a compiled function: arguments, temporaries and the outputs
    that do not reuse donated arguments (as `harmony_jax.plan` counts them)."""
    m = compiled.memory_analysis()
    return int(
        m.argument_size_in_bytes
        + m.temp_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.generated_code_size_in_bytes
    )


def isolated(fn: Callable, *args, **kwargs):
    """`fn(*args, **kwargs)` in a fresh spawned process: its own device memory and peak counter,
    and a crash (an out-of-memory abort) stays there; raises RuntimeError if the child died."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except concurrent.futures.process.BrokenProcessPool as e:
            raise RuntimeError(f"the benchmark process died ({e})") from None


def error_note(error: BaseException, limit: int = 120) -> str:
    """One line naming an exception (first line of its message), short enough for a table."""
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]}"[:limit]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (readable as text, pasteable into docs); floats to 3 significant digits."""
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
