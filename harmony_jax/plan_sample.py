"""`plan --mode sample`: will sampling fit? The jitted SyncCFG sampler compiled for a mesh, dtype
and quantization on simulated CPU devices, and its per-device memory read.

The sampler is `diffusion.syncfg.sample` as `generation` runs it (text-to-AV, `config.sample`'s
guidance, Euler; the loop's memory does not depend on the step count) on the latent geometry of
the configured codecs (`system.latent_inputs`: no codec weights are read), with the parameters laid
out as `inference.load_for_inference` lays them: the training rules on the mesh, floats in
`dtype`, Dense kernels int8 with float32 scales under `quantize='int8'`. The prompts arrive
embedded (`generation.embed_prompts`); a frozen text encoder is resident only while it embeds
them, before the sampler runs, so its bytes are a second peak beside the sampler's, not part of
it. The codecs' decoders run after the sampler and are not counted.

XLA:CPU has no bfloat16 matmul: it computes each one in float32, converting the weights first,
and its loop-invariant code motion then hoists that conversion of every stacked kernel out of
the denoising loop (35 GiB of float32 weights for harmony_5b that a GPU or TPU never makes).
`CPU_XLA_FLAGS` turns that one pass off for the planning compile; the figures remain XLA:CPU's
(its activations of a bfloat16 model are float32 where an accelerator's are bfloat16), so treat
them as an upper estimate.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import qwix

from harmony_jax.diffusion.sampler import sample
from harmony_jax.parallel.mesh import make_mesh
from harmony_jax.parallel.sharding import axis_rules, logical_shardings, replicated
from harmony_jax.quantize import int8_provider, is_quantized, quantized_system
from harmony_jax.system import System, build_system, latent_inputs
from harmony_jax.units import GiB

CPU_XLA_FLAGS = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"


def use_cpu_xla_flags() -> None:
    """Adds CPU_XLA_FLAGS to XLA_FLAGS; effective where JAX's backends have not started yet
    (the CLI's first JAX call comes after)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if CPU_XLA_FLAGS not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_XLA_FLAGS}".strip()


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """Per-device bytes of the compiled sampler, and of the text encoder before it."""

    mesh: dict[str, int]
    clips: int  # per call (SyncCFG runs 3 x clips rows)
    dtype: str
    quantize: str
    params: int
    prompts: int  # the embedded prompts (Conditioning)
    temp: int  # activations and every other temporary of the sampler
    total: int  # arguments + temporaries + outputs
    text: int  # a frozen text encoder's weights, resident while the prompts are embedded
    compile_seconds: float

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())


def _per_device(tree: Any) -> int:
    return int(
        sum(
            math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
            for x in jax.tree.leaves(tree)
        )
    )


def abstract_params(system: System, mesh, rules, dtype: str) -> Any:
    """The sampling parameters of `system` (a `QuantizedSystem` for int8) as sharded
    ShapeDtypeStructs: floats in `dtype`, int8 kernels and their float32 scales as qwix holds
    them."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda b: system.init(jax.random.key(0), b), system.example_batch(1))
        shardings = nn.meta.unbox(logical_shardings(boxed, mesh, rules))

    def cast(x, sharding):
        if is_quantized(x):  # int8 and its scales as they are
            return jax.tree.map(
                lambda y, s: jax.ShapeDtypeStruct(y.shape, y.dtype, sharding=s), x, sharding
            )
        floating = jnp.issubdtype(x.dtype, jnp.floating)
        return jax.ShapeDtypeStruct(x.shape, dtype if floating else x.dtype, sharding=sharding)

    return jax.tree.map(cast, nn.meta.unbox(boxed), shardings, is_leaf=is_quantized)


def text_encoder_bytes(config: ml_collections.ConfigDict, quantize: str) -> int:
    """Bytes of the configured frozen text encoder's weights (0 for a trained one) as sampling
    holds them: bfloat16 as published, int8 kernels (+ float32 scales) under int8."""
    text = build_system(config).text_encoder
    if text.trainable:
        return 0
    module = text.module
    if quantize == "int8":
        module = qwix.quantize_model(module, int8_provider())
    ids = jax.ShapeDtypeStruct((1, text.max_len), jnp.int32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), ids)
    leaves = jax.tree.leaves(shapes, is_leaf=is_quantized)
    size = lambda x: math.prod(x.shape)
    return sum(
        size(x.array.qvalue) + 4 * size(x.array.scale) if is_quantized(x) else 2 * size(x)
        for x in leaves
    )


def plan_sampler(
    config: ml_collections.ConfigDict,
    *,
    dtype: str = "bfloat16",
    quantize: str = "none",
    clips: int = 1,
    devices: list | None = None,
) -> SamplePlan:
    """Compiles the sampler of `config` for the mesh `config.mesh` over `devices`."""
    mesh = make_mesh(config.mesh, devices)
    rules = axis_rules(config)
    built = build_system(config)
    text_dim = built.text_encoder.dim
    empty = None if built.text_encoder.trainable else jnp.zeros((1, text_dim), jnp.float32)
    system = quantized_system(latent_inputs(built, empty), quantize)  # as `plan.latent_system`
    params = abstract_params(system, mesh, rules, dtype)
    batch = system.example_batch(clips)
    text_keys = ("video_text_ids", "video_text_mask", "audio_text_ids", "audio_text_mask")
    text = {k: batch[k] for k in (*text_keys, "transcript_ids")}
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        cond = jax.eval_shape(system.conditioning, params, text)
    rep = replicated(mesh)
    cond = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), cond)
    s = config.sample
    video_shape = (clips, *system.video_latent_shape)
    audio_shape = (clips, *system.audio_latent_shape)

    def run(params, rng, cond):
        return sample(
            system.denoiser(params),
            rng,
            cond,
            video_shape=video_shape,
            audio_shape=audio_shape,
            guidance=s.guidance,
            steps=2,
            shift=s.shift,
            s_v=s.s_v,
            s_a=s.s_a,
            cfg_scale=s.cfg_scale,
            uncond=cond if s.guidance == "cfg" else None,
            silent_audio=jnp.zeros((1, *audio_shape[1:]), jnp.float32),
        )

    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
    start = time.time()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = jax.jit(run).lower(params, rng, cond).compile()
    seconds = time.time() - start
    mem = compiled.memory_analysis()
    # The arguments as held, not as compiled: jit drops the ones the sampler never reads (a
    # trained text encoder's), which still sit in memory beside it.
    resident = _per_device(params) + _per_device(cond)
    total = (
        resident
        + mem.temp_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.generated_code_size_in_bytes
    )
    return SamplePlan(
        mesh=dict(mesh.shape),
        clips=clips,
        dtype=dtype,
        quantize=quantize,
        params=_per_device(params),
        prompts=_per_device(cond),
        temp=int(mem.temp_size_in_bytes),
        total=int(total),
        text=text_encoder_bytes(config, quantize),
        compile_seconds=seconds,
    )


def format_sample_plan(plan: SamplePlan, hbm_gib: float = 0.0) -> str:
    """The plan as a small table; with `hbm_gib`, whether each peak fits that much memory."""
    mesh = ",".join(f"{k}={v}" for k, v in plan.mesh.items())
    lines = [
        f"sampler: mesh {mesh} ({plan.devices} devices), {plan.clips} clip(s) per call "
        f"({3 * plan.clips} SyncCFG rows), weights {plan.dtype}"
        + (f", {plan.quantize} kernels" if plan.quantize != "none" else ""),
        f"{'per device':<28}{'GiB':>10}",
    ]
    rows = [
        ("parameters", plan.params),
        ("embedded prompts", plan.prompts),
        ("activations + temporaries", plan.temp),
        ("total (sampling)", plan.total),
    ]
    if plan.text:
        rows.append(("text encoder (embedding)", plan.text))  # replicated, before the sampler
        rows.append(("total while embedding", plan.params + plan.text))
    lines += [f"  {name:<26}{size / GiB:>10.2f}" for name, size in rows]
    lines.append(f"compiled in {plan.compile_seconds:.0f} s")
    if hbm_gib:
        peak = max(plan.total, plan.params + plan.text)
        verdict = "fits" if peak <= hbm_gib * GiB else "does NOT fit"
        lines.append(
            f"{verdict} in {hbm_gib:g} GiB per device ({100 * peak / (hbm_gib * GiB):.0f}%)"
        )
    return "\n".join(lines)
