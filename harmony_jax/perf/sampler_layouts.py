"""The SyncCFG sampler under the layouts `sample --mesh --dtype --quantize` loads: per-step time
and per-device bytes, each against one device in float32, measured side by side in one run.

Every layout samples the same randomly initialised model (float32 on one device, then laid out
as `inference.load_for_inference` lays a checkpoint out: the training rules on the mesh, floats
cast, Dense kernels int8 under 'int8') on the same prompts and noise. Bytes per device are the
parameters' (from their shardings) plus the compiled sampler's temporaries
(`memory_analysis()`); time is the jitted clip over its steps.
"""

from __future__ import annotations

import dataclasses
import math

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from harmony_jax import plan
from harmony_jax.diffusion.sampler import sample
from harmony_jax.parallel.mesh import AXES, apply_mesh_flag, make_mesh
from harmony_jax.parallel.sharding import axis_rules, replicated
from harmony_jax.perf.measure import format_table, interleaved_medians
from harmony_jax.perf.train_step import random_batch
from harmony_jax.plan_sample import abstract_params
from harmony_jax.quantize import is_quantized, quantize_leaf, quantized_system

HEADERS = ("mesh", "dtype", "quantize", "ms / step", "x time", "MiB / device", "x bytes")


@dataclasses.dataclass(frozen=True)
class Layout:
    mesh: str  # `--mesh` ('' : one device)
    dtype: str
    quantize: str = "none"


def default_layouts(mesh: str) -> list[Layout]:
    """One device in float32 (the base), bfloat16, bfloat16 with int8 kernels; then `mesh`
    (e.g. 'fsdp=8') in float32 and in bfloat16 with int8 kernels."""
    rows = [Layout("", "float32"), Layout("", "bfloat16"), Layout("", "bfloat16", "int8")]
    if mesh:
        rows += [Layout(mesh, "float32"), Layout(mesh, "bfloat16", "int8")]
    return rows


@dataclasses.dataclass(frozen=True)
class LayoutRow:
    layout: Layout
    mesh: dict[str, int]
    step_seconds: float
    device_bytes: int


def devices_needed(layout: Layout) -> int:
    """Devices the layout's mesh spans."""
    c = _mesh_config(ml_collections.ConfigDict(dict(mesh={})), layout.mesh)
    return math.prod(int(c.mesh[a]) for a in AXES)


def _mesh_config(config: ml_collections.ConfigDict, spec: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh = dict(data=1, fsdp=1, sequence=1, tensor=1, dcn_data=1, dcn_fsdp=1)
    if spec:
        apply_mesh_flag(config.mesh, spec)
    return config


def measure_layouts(
    config: ml_collections.ConfigDict,
    layouts: list[Layout],
    *,
    steps: int = 40,
    runs: int = 3,
    warmup: int = 1,
) -> list[LayoutRow]:
    """One row per layout; the first is the base the ratios divide by."""
    base = plan.latent_system(config)
    b = config.batch_size
    batch = random_batch(base, b, np.random.default_rng(1))
    params = nn.meta.unbox(jax.jit(base.init)(jax.random.key(0), batch))
    cond = jax.jit(base.conditioning)(params, batch)
    video_shape = (b, *base.video_latent_shape)
    audio_shape = (b, *base.audio_latent_shape)
    s = config.sample
    calls, meta = {}, {}
    for layout in layouts:
        c = _mesh_config(config, layout.mesh)
        mesh = make_mesh(c.mesh, jax.devices()[: devices_needed(layout)])
        rules = axis_rules(c)
        system = quantized_system(plan.latent_system(c), layout.quantize)
        abstract = abstract_params(system, mesh, rules, layout.dtype)
        laid = _lay_out(params, abstract)
        placed_cond = jax.device_put(cond, replicated(mesh))

        def run(p, rng, cond, system=system):
            return sample(
                system.denoiser(p),
                rng,
                cond,
                video_shape=video_shape,
                audio_shape=audio_shape,
                steps=steps,
                shift=s.shift,
                s_v=s.s_v,
                s_a=s.s_a,
            )

        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            compiled = jax.jit(run).lower(laid, jax.random.key(2), placed_cond).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        calls[layout] = lambda f=compiled, p=laid, c=placed_cond: f(p, jax.random.key(2), c)
        meta[layout] = (dict(mesh.shape), plan._bytes_per_device(abstract) + int(temp))
    times = interleaved_medians(calls, runs, warmup)
    return [
        LayoutRow(layout, meta[layout][0], times[layout] / steps, meta[layout][1])
        for layout in layouts
    ]


def _lay_out(params, abstract):
    """`params` (float32) as `abstract` (`plan_sample.abstract_params`) describes them: cast,
    int8 where quantized, each array on its shards (one program)."""
    flat, want = (flax.traverse_util.flatten_dict(t) for t in (params, abstract))

    def convert(flat):
        return {
            path: quantize_leaf(flat[path], t) if is_quantized(t) else flat[path].astype(t.dtype)
            for path, t in want.items()
        }

    shardings = jax.tree.map(lambda t: t.sharding, want)
    return flax.traverse_util.unflatten_dict(jax.jit(convert, out_shardings=shardings)(flat))


def layout_table(rows: list[LayoutRow]) -> str:
    """ms per step and MiB per device, each also against the first row."""
    base = rows[0]
    cells = []
    for r in rows:
        mesh = ",".join(f"{k}={v}" for k, v in r.mesh.items() if v > 1) or "1 device"
        cells.append(
            (
                mesh,
                r.layout.dtype,
                r.layout.quantize,
                1e3 * r.step_seconds,
                r.step_seconds / base.step_seconds,
                r.device_bytes / 2**20,
                r.device_bytes / base.device_bytes,
            )
        )
    return format_table(HEADERS, cells)
