"""The real train step, measured per (remat policy, attention kernel, compute dtype).

Each row builds what `training.loop` builds (the train state of
`training.state.make_train_state`, `make_train_step` jitted with the state donated) for a run
from latent records (`plan.latent_system`: the step `data.source='latents'` takes), then reports
the median step time, achieved TFLOP/s and MFU from XLA's cost analysis (`plan.step_flops`:
layers unrolled, so no loop body is counted once) and the step's memory. Parameters stay float32
in every row: 'bfloat16' is the compute dtype only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmony_jax import plan
from harmony_jax.defaults import base_config
from harmony_jax.model.dit import num_params
from harmony_jax.parallel.mesh import make_mesh
from harmony_jax.parallel.sharding import axis_rules, batch_sharding, replicated
from harmony_jax.perf.measure import (
    compiled_bytes,
    error_note,
    format_table,
    isolated,
    matmul_flops_by_dtype,
    median_seconds,
    peak_matmul,
    peak_memory_bytes,
)
from harmony_jax.system import System
from harmony_jax.training.state import make_train_state
from harmony_jax.training.step import make_train_step, reference_frames
from harmony_jax.units import GiB

REMATS = ("none", "full", "dots", "dots_no_batch")
ATTENTIONS = ("xla", "cudnn", "blockwise", "splash")
DTYPES = ("float32", "bfloat16")
HEADERS = (
    "remat",
    "attention",
    "compute",
    "step ms",
    "TFLOP/s",
    "MFU %",
    "HFU %",
    "compiled GiB",
    "peak GiB",
    "compile s",
    "note",
)
RATIO_HEADERS = ("remat", "compute", "attention", "step time / {}", "compiled GiB / {}")


def interpreted_note(attention: str) -> str:
    """What a row of this kernel measures on this backend, where that is not the kernel itself."""
    if attention == "splash" and jax.default_backend() != "tpu":
        return (
            f"interpreted: the Pallas TPU kernel run by the interpreter on {jax.default_backend()}"
        )
    return ""


@dataclasses.dataclass(frozen=True)
class StepRow:
    remat: str
    attention: str
    dtype: str
    step_seconds: float | None = None  # median over the timed steps
    compile_seconds: float | None = None
    model_flops: float | None = None  # one step, without remat recomputation
    executed_flops: float | None = None  # one step, with this row's recomputation
    compiled_bytes: int | None = None  # per device, from compiled.memory_analysis()
    peak_bytes: int | None = None  # per device, the allocator's peak; None off GPU/TPU
    note: str = ""  # why a row has no measurement

    def cells(self, peak_flops: float) -> tuple:
        """The row under HEADERS; MFU counts model FLOPs, HFU also the recomputed ones."""
        if self.step_seconds is None:
            return (self.remat, self.attention, self.dtype, *["-"] * 7, self.note)
        rate = lambda flops: flops / self.step_seconds
        peak = "n/a" if self.peak_bytes is None else self.peak_bytes / GiB
        return (
            self.remat,
            self.attention,
            self.dtype,
            1e3 * self.step_seconds,
            rate(self.model_flops) / 1e12,
            100 * rate(self.model_flops) / peak_flops,
            100 * rate(self.executed_flops) / peak_flops,
            self.compiled_bytes / GiB,
            peak,
            self.compile_seconds,
            self.note,
        )


def quick_config() -> ml_collections.ConfigDict:
    """A model small enough that every row compiles and runs on a 2-core CPU in seconds: two
    joint layers of width 64, 8 frames of 16x16 pixels (512 video tokens) and 32 audio frames."""
    c = base_config()
    c.data.update(fps=8.0, num_frames=8, height=16, width=16)
    c.model.video.update(dim=64, heads=2, ffn_dim=128)
    c.model.audio.update(dim=64, heads=2, ffn_dim=128)
    c.batch_size = 2
    return c


def row_config(
    config: ml_collections.ConfigDict, remat: str, attention: str, dtype: str
) -> ml_collections.ConfigDict:
    """`config` with the row's remat policy, attention kernel and compute dtype (params f32)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.update(remat=remat, attention=attention, dtype=dtype, param_dtype="float32")
    return config


def random_batch(
    system: System,
    batch_size: int,
    rng: np.random.Generator,
    sharding: jax.sharding.Sharding | None = None,
) -> dict[str, jax.Array]:
    """A batch of the inputs `system` trains on (`plan.abstract_batch`): normal floats (latents
    or media, text embeddings), every mask on, token ids drawn from the vocabulary."""
    shapes = plan.abstract_batch(system, batch_size)
    vocab = system.model_config.transcript.vocab_size
    if system.text_encoder.trainable:  # the demo encoder's ids share the transcript's range
        vocab = min(vocab, system.text_encoder.vocab_size)
    make = lambda s: (
        np.ones(s.shape, s.dtype)
        if s.dtype == jnp.bool_
        else rng.integers(1, vocab, s.shape, s.dtype)
        if jnp.issubdtype(s.dtype, jnp.integer)
        else rng.standard_normal(s.shape, s.dtype)
    )
    return {k: jax.device_put(make(s), sharding) for k, s in shapes.items()}


def step_flops(config: ml_collections.ConfigDict, batch_size: int) -> float:
    """FLOPs of one train step of `config` by XLA's cost analysis (`plan.step_flops`)."""
    system = plan.latent_system(config)
    return plan.step_flops(system, config, plan.abstract_batch(system, batch_size))


def measure_row(
    config: ml_collections.ConfigDict,
    remat: str,
    attention: str,
    dtype: str,
    *,
    steps: int = 10,
    warmup: int = 2,
    donate: bool = True,
    num_devices: int | None = None,
    interpret_splash: bool = True,
) -> StepRow:
    """One row without its FLOPs: compiles the step of `config` with these settings on its mesh
    over the first `num_devices` devices (all by default) and times `steps` calls.

    Rows that cannot run say why in `note` (a kernel this backend lacks, a compile or run error
    such as running out of memory) instead of raising; so do splash rows off TPU unless
    `interpret_splash` (the interpreter is exact but only a tiny model can afford it).
    """
    row = StepRow(remat, attention, dtype)
    if attention == "cudnn" and jax.default_backend() != "gpu":
        return dataclasses.replace(
            row,
            note=f"skipped: cuDNN attention needs an NVIDIA GPU (backend {jax.default_backend()})",
        )
    if attention == "splash" and jax.default_backend() != "tpu" and not interpret_splash:
        return dataclasses.replace(
            row,
            note=f"skipped: off TPU splash runs interpreted "
            f"(backend {jax.default_backend()}); name it in "
            f"--attention to run it",
        )
    config = row_config(config, remat, attention, dtype)
    try:
        seconds, compile_seconds, loss, nbytes = time_step(
            plan.latent_system(config),
            config,
            steps=steps,
            warmup=warmup,
            donate=donate,
            num_devices=num_devices,
        )
    except Exception as e:
        return dataclasses.replace(row, note=error_note(e))
    notes = [interpreted_note(attention), "" if np.isfinite(loss) else f"non-finite loss {loss}"]
    return dataclasses.replace(
        row,
        step_seconds=seconds,
        compile_seconds=compile_seconds,
        compiled_bytes=nbytes,
        peak_bytes=peak_memory_bytes(),
        note="; ".join(n for n in notes if n),
    )


def time_step(
    system: System,
    config: ml_collections.ConfigDict,
    *,
    steps: int,
    warmup: int,
    donate: bool = True,
    num_devices: int | None = None,
) -> tuple[float, float, float, int]:
    """(median step seconds, compile seconds, last loss, compiled bytes) of `system`'s train
    step (`compiled_step`)."""
    one_step, compile_seconds, nbytes = compiled_step(
        system, config, donate=donate, num_devices=num_devices
    )
    seconds = median_seconds(one_step, steps, warmup)
    return seconds, compile_seconds, float(one_step()), nbytes


def compiled_step(
    system: System,
    config: ml_collections.ConfigDict,
    *,
    donate: bool = True,
    num_devices: int | None = None,
    base: Callable[[Any], Any] | None = None,
) -> tuple[Callable[[], jax.Array], float, int]:
    """(one_step, compile seconds, compiled bytes) of `system`'s train step as the loop runs it
    (the train state of `make_train_state` on `config`'s mesh over the first `num_devices`
    devices, the step jitted with the state donated): `one_step()` advances its own state on
    one random batch of `system`'s inputs and returns the loss. `base`: a LoRA system's frozen
    base (make_train_state's)."""
    mesh = make_mesh(config.mesh, jax.devices()[:num_devices])
    rules = axis_rules(config)
    tx, state = make_train_state(system, config, mesh, rules, base=base)
    data_sharding = batch_sharding(mesh)
    batch = random_batch(system, config.batch_size, np.random.default_rng(1), data_sharding)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(
        make_train_step(system, tx, config),
        in_shardings=(state_shardings, data_sharding),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0 if donate else (),
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_seconds = time.perf_counter() - start
    holder = {"state": state}
    del state

    def one_step() -> jax.Array:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            holder["state"], metrics = compiled(holder["state"], batch)
        return metrics["loss"]

    return one_step, compile_seconds, compiled_bytes(compiled)


def measure(
    config: ml_collections.ConfigDict,
    *,
    remats: Sequence[str] = REMATS,
    attentions: Sequence[str] = ATTENTIONS,
    dtypes: Sequence[str] = DTYPES,
    steps: int = 10,
    warmup: int = 2,
    donate: bool = True,
    isolate: bool = False,
    num_devices: int | None = None,
    interpret_splash: bool = True,
) -> tuple[list[StepRow], float, str]:
    """(rows, peak FLOP/s, what the peak was measured with) for every combination
    (`interpret_splash` as `measure_row`'s).

    `isolate` runs the peak matmul, each row and each FLOP count in a fresh process: each row's
    peak memory is its own, one that runs out of memory cannot take the others down, and this
    process never touches the accelerator.
    """
    call = isolated if isolate else (lambda fn, *a, **k: fn(*a, **k))
    peak_flops, peak_what = call(peak_matmul)
    flops = {}  # (remat, dtype) -> FLOPs per step (attention counted as the plain kernel)
    rows = []
    for remat in remats:
        for attention in attentions:
            for dtype in dtypes:
                try:
                    row = call(
                        measure_row,
                        config,
                        remat,
                        attention,
                        dtype,
                        steps=steps,
                        warmup=warmup,
                        donate=donate,
                        num_devices=num_devices,
                        interpret_splash=interpret_splash,
                    )
                except RuntimeError as e:
                    row = StepRow(remat, attention, dtype, note=error_note(e))
                if row.step_seconds is not None:
                    for r in {remat, "none"} - {k for k, d in flops if d == dtype}:
                        flops[r, dtype] = call(
                            step_flops, row_config(config, r, "xla", dtype), config.batch_size
                        )
                    row = dataclasses.replace(
                        row, model_flops=flops["none", dtype], executed_flops=flops[remat, dtype]
                    )
                rows.append(row)
    return rows, peak_flops, peak_what


def matmul_dtype_shares(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Fractions of the train step's matmul FLOPs by operand dtype under `config`'s compute
    dtype (layers unrolled, plain attention), from the traced step: nothing is compiled."""
    system = plan.latent_system(config)
    system = dataclasses.replace(
        system,
        model_config=dataclasses.replace(system.model_config, scan_layers=False, attention="xla"),
    )
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    tx, state = plan.abstract_state(system, config, mesh, axis_rules(config))
    batch = plan.abstract_batch(system, config.batch_size)
    flops = matmul_flops_by_dtype(make_train_step(system, tx, config), state, batch)
    total = sum(flops.values())
    return {k: v / total for k, v in flops.items()}


def describe(config: ml_collections.ConfigDict, peak_flops: float, peak_what: str) -> str:
    """The lines above the table: model size, tokens, batch and the measured peak."""
    system = plan.latent_system(config)
    example = plan.abstract_batch(system, 1)
    params = num_params(nn.meta.unbox(jax.eval_shape(system.init, jax.random.key(0), example)))
    video = math.prod(system.video_latent_shape[:3]) // math.prod(config.model.video.patch)
    ref = reference_frames(system)  # cut from the clip's audio latents in the step
    shares = matmul_dtype_shares(row_config(config, "none", "xla", "bfloat16"))
    shares = ", ".join(f"{100 * v:.1f}% {k}" for k, v in sorted(shares.items()))
    return (
        f"{params:,} parameters (depth {config.model.depth}), global batch "
        f"{config.batch_size}, per sample {video} video + {system.audio_latent_shape[0]} "
        f"audio + {ref} reference-voice tokens, {system.text_len} text tokens\n"
        f"bfloat16 compute: matmul FLOPs {shares} (by operand dtype)\n"
        f"peak {peak_flops / 1e12:.3g} TFLOP/s ({peak_what}); backend "
        f"{jax.default_backend()}, {jax.device_count()} device(s)"
    )


def table(rows: Sequence[StepRow], peak_flops: float) -> str:
    return format_table(HEADERS, [row.cells(peak_flops) for row in rows])


def ratio_table(rows: Sequence[StepRow], baseline: str = "blockwise") -> str:
    """Each measured row against the `baseline` kernel's row of the same remat policy and
    compute dtype: step time and compiled bytes as ratios ('' where there is no pair)."""
    base = {
        (r.remat, r.dtype): r
        for r in rows
        if r.attention == baseline and r.step_seconds is not None
    }
    pairs = [
        (r, base[r.remat, r.dtype])
        for r in rows
        if r.attention != baseline and r.step_seconds is not None and (r.remat, r.dtype) in base
    ]
    if not pairs:
        return ""
    headers = [h.format(baseline) for h in RATIO_HEADERS]
    return format_table(
        headers,
        [
            (
                r.remat,
                r.dtype,
                r.attention,
                r.step_seconds / b.step_seconds,
                r.compiled_bytes / b.compiled_bytes,
            )
            for r, b in pairs
        ],
    )
