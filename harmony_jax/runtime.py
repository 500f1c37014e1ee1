"""The sampling layout (`--mesh`, `--dtype`, `--quantize`) for the devices at hand, as the Colab
notebook picks it: what a user with one consumer GPU, or a TPU slice, would choose.

A CPU samples in float32 (XLA:CPU has no faster bfloat16 matmul). A GPU or TPU samples in
bfloat16 when the weights, split over every device (fsdp), take at most `WEIGHT_SHARE` of each
device's memory, leaving the rest to activations; else in int8 (weight-only, about half
bfloat16's bytes). The weights counted are the DiT's, a trained text encoder's and a frozen one's
(umT5 is resident while the prompts are embedded). `python -m harmony_jax.plan --mode sample`
measures the whole sampler's memory where this only estimates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import ml_collections

from harmony_jax.plan_sample import text_encoder_bytes
from harmony_jax.system import build_system
from harmony_jax.units import GiB

WEIGHT_SHARE = 0.6  # of a device's memory, for the weights


@dataclasses.dataclass(frozen=True)
class Layout:
    mesh: str | None  # `--mesh` (None: every device on fsdp)
    dtype: str  # `--dtype`
    quantize: str  # `--quantize`
    why: str  # one line saying what was found and chosen


def device_memory(device: jax.Device) -> int | None:
    """Bytes the device's allocator may use (`memory_stats()['bytes_limit']`), None where the
    backend does not say (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def weight_count(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(parameters of the trained tree, bytes of a frozen text encoder in bfloat16), from shapes
    alone (nothing is read or computed)."""
    system = build_system(config)
    shapes = jax.eval_shape(lambda b: system.init(jax.random.key(0), b), system.example_batch(1))
    return sum(x.size for x in jax.tree.leaves(shapes)), text_encoder_bytes(config, "none")


def choose_layout(
    config: ml_collections.ConfigDict,
    devices: Sequence[jax.Device] | None = None,
    weights: tuple[int, int] | None = None,
) -> Layout:
    """The layout to sample `config`'s model with on `devices` (default: this host's);
    `weights`: `weight_count(config)` if already counted."""
    devices = list(jax.local_devices() if devices is None else devices)
    n, kind = len(devices), devices[0].platform
    params, text = weight_count(config) if weights is None else weights
    found = f"{n} {kind.upper()} device{'s' if n > 1 else ''} ({devices[0].device_kind})"
    if kind == "cpu":
        return Layout(None, "float32", "none", f"{found}: float32 weights, every device on fsdp")
    memory = device_memory(devices[0])
    bf16 = (2 * params + text) / n  # per device, split over fsdp
    int8 = (params + text / 2) / n
    if memory is None:
        return Layout(None, "bfloat16", "none", f"{found}, memory unknown: bfloat16 weights")
    budget = WEIGHT_SHARE * memory
    about = lambda b: f"{b / GiB:.1f} GiB"
    found += f", {about(memory)} each; weights per device: {about(bf16)} bf16, {about(int8)} int8"
    if bf16 <= budget:
        return Layout(None, "bfloat16", "none", f"{found} -> bfloat16, every device on fsdp")
    verdict = "" if int8 <= budget else " (still over the budget: run plan --mode sample)"
    return Layout(None, "bfloat16", "int8", f"{found} -> int8 kernels{verdict}")
