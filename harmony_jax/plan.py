"""Will it fit? Compile the real train step for a target mesh on CPU and read its memory.

    python -m harmony_jax.plan --config configs/harmony_5b.py --mesh data=1,fsdp=64,tensor=1 \
        [--batch 128] [--remat full|dots|dots_no_batch|none] [--inputs latents|media] \
        [--hbm_gib 95] [--attention splash,blockwise] [--config.optim.grad_accum=2 ...]
    python -m harmony_jax.plan --mode sample --config configs/harmony_5b.py --mesh fsdp=8 \
        [--dtype bfloat16|float32] [--quantize none|int8] [--batch 1] [--hbm_gib 16]

`--mode sample` plans sampling instead (`harmony_jax.plan_sample`): the jitted SyncCFG sampler
with the weights as `sample --mesh --dtype --quantize` loads them; `--batch` is clips per call.

`make_train_step` (with the run's optimizer, EMA and CTS loss) is lowered and compiled on
abstract inputs (`jax.ShapeDtypeStruct`s with their `NamedSharding`s: no array is ever made) for
a mesh of that many simulated CPU devices. It prints per-device bytes from
`compiled.memory_analysis()`: parameters, optimizer state and EMA (from their shardings), the
batch, activations/temporaries, and the total, plus the FLOPs of one step.

Inputs (`--inputs`):
  latents  (default) the step of a run from latent records (`python -m harmony_jax.encode`, then
           `data.source='latents'`): the system `training.loop` builds for it
           (`system.latent_inputs`), so latent shapes, rates and frame times are the configured
           codecs' own and no codec weights are read. For harmony_5b: video [B, 31, 44, 80, 48]
           (27,280 tokens after the 1x2x2 patch), audio [B, 157, 20] (the step cuts the
           62-latent reference voice from it), umT5 embeddings [B, 512, 4096] x 2.
  media    the step as a run from a clip folder takes it (`build_system`): the codec encoders
           and a frozen text encoder run inside the step, so their weights must be readable at
           the configured paths.

For a frozen text encoder (umT5) the latent plan adds its weights (bf16, replicated) and the
total with them resident: a run from latents does not load it, unless to embed the prompts of
the samples it writes.

Caveats: XLA:CPU's buffer assignment and fusion differ from TPU/GPU, so treat the figures as a
close estimate. Attention is the configured kernel as it lowers off GPU: 'auto' (harmony_5b) is
the blockwise kernel, in the memory class of the flash kernels TPU and GPU run. FLOPs come from
lowering the step unrolled at depth 1 and 2 and extrapolating linearly in depth (XLA's cost
analysis counts a loop body once); they include remat recomputation and the optimizer.

Attention kernels (`--attention`, default `model.attention`): each one named is compiled and the
plans print side by side, one column each. `splash` runs interpreted here (the Pallas TPU kernel
lowered for XLA:CPU), so `model.attention=splash` alone also prints the blockwise plan beside it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from harmony_jax import quiet_logs
from harmony_jax.config_check import check_config
from harmony_jax.config_cli import parse_flags
from harmony_jax.errors import ConfigError, FlagError, reported_as_one_line
from harmony_jax.inference import DTYPE_HELP, DTYPES, QUANTIZE_HELP
from harmony_jax.parallel.mesh import AXES, apply_mesh_flag, make_mesh
from harmony_jax.parallel.sharding import axis_rules, batch_sharding, replicated
from harmony_jax.plan_sample import format_sample_plan, plan_sampler, use_cpu_xla_flags
from harmony_jax.quantize import QUANTIZE
from harmony_jax.system import System, build_system, latent_inputs
from harmony_jax.training.lora import with_lora
from harmony_jax.training.state import make_train_state
from harmony_jax.training.step import make_train_step
from harmony_jax.units import GiB

MODES = ("train", "sample")
FROZEN_TEXT_DTYPE = "bfloat16"  # Wan2.2's umT5-XXL checkpoint (models_t5_umt5-xxl-enc-bf16)


# ---- the inputs of a run from latent records


def latent_system(config: ml_collections.ConfigDict) -> System:
    """The `System` a run with `data.source='latents'` trains (`system.latent_inputs` over the
    configured codecs, as `training.loop` builds it): latent shapes, rates and frame times are
    the real codecs', whose weights are never read. A frozen text encoder's stored empty prompt
    is stood in for by one zero embedding: only its shape reaches the step."""
    system = build_system(config)
    empty = (
        None
        if system.text_encoder.trainable
        else np.zeros((1, system.text_encoder.dim), np.float32)
    )
    return latent_inputs(system, empty)


def abstract_batch(
    system: System, batch_size: int, sharding: jax.sharding.Sharding | None = None
) -> dict[str, jax.ShapeDtypeStruct]:
    """One global batch of what `system` trains on (`System.example_batch`: raw media, or
    latents and text embeddings), as ShapeDtypeStructs. The reference voice is not an input:
    the step cuts it from the clip's audio latents (`training.step.reference_voice`)."""
    return {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
        for k, v in system.example_batch(batch_size).items()
    }


def plan_system(config: ml_collections.ConfigDict, inputs: str) -> System:
    """The system `train` runs: on latent records (`inputs='latents'`) or on media; a LoRA
    run's (`config.lora.rank` > 0) with its adapters."""
    if inputs == "latents":
        return with_lora(latent_system(config), config)
    if inputs == "media":
        return with_lora(build_system(config), config)
    raise FlagError(f"--inputs={inputs!r} is not one of ('latents', 'media')")


# ---- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per-device bytes of one compiled train step, and its FLOPs."""

    mesh: dict[str, int]
    batch_size: int  # global
    per_device_batch: float  # rows per data x fsdp shard and step
    grad_accum: int  # microbatches per step
    remat: str
    params: int
    opt_state: int
    ema: int
    batch: int
    temp: int  # activations and every other temporary of the step
    total: int  # arguments + temporaries + outputs not aliased to (donated) arguments
    flops: float  # per step, all devices together
    compile_seconds: float
    frozen_text: int = 0  # latent runs: a frozen text encoder's weights, if it were resident
    frozen_base: int = 0  # a LoRA run's frozen base (`params` are then its trained leaves)

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())


def frozen_text_bytes(config: ml_collections.ConfigDict) -> int:
    """Bytes of the configured frozen text encoder's weights (0 for a trained one), from its
    module's shapes (nothing read) at FROZEN_TEXT_DTYPE: what each device holds when a run keeps
    it resident (replicated, as a run from media does; one from latents loads it only to embed
    sampling prompts)."""
    text = build_system(config).text_encoder
    if text.trainable:
        return 0
    ids = jax.ShapeDtypeStruct((1, text.max_len), jnp.int32)
    shapes = jax.eval_shape(text.module.init, jax.random.key(0), ids)
    return sum(x.size for x in jax.tree.leaves(shapes)) * jnp.dtype(FROZEN_TEXT_DTYPE).itemsize


def _bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    return int(
        sum(
            math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
            for x in jax.tree.leaves(tree)
        )
    )


def abstract_state(system: System, config: ml_collections.ConfigDict, mesh, rules):
    """(optimizer, train state as sharded ShapeDtypeStructs), assembled as training assembles
    it (`training.state.make_train_state`)."""
    return make_train_state(system, config, mesh, rules, abstract=True)


def step_flops(system: System, config: ml_collections.ConfigDict, batch: dict) -> float:
    """FLOPs of one train step (global), counted where XLA's cost analysis sees every operation:
    layers unrolled (at depth 1 and 2, extrapolated), no microbatch loop (the same FLOPs), and
    plain attention (a blockwise kernel's loops would be counted once; the usual convention,
    not counting a flash backward's recomputed scores)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.optim.grad_accum = 1
    one = make_mesh({a: 1 for a in AXES}, jax.devices()[:1])
    rules = axis_rules(config)
    plain = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    flops = []
    for depth in (1, 2):
        cfg = dataclasses.replace(
            system.model_config, depth=depth, scan_layers=False, attention="xla"
        )
        sys_d = dataclasses.replace(system, model_config=cfg, lora=None)
        sys_d = with_lora(sys_d, config) if system.lora is not None else sys_d  # its modules' paths
        tx, state = make_train_state(sys_d, config, one, rules, abstract=True)
        with jax.set_mesh(one), nn.logical_axis_rules(rules):
            cost = jax.jit(make_train_step(sys_d, tx, config)).lower(state, plain).cost_analysis()
        flops.append(float(cost["flops"]))
    return flops[0] + (system.model_config.depth - 1) * (flops[1] - flops[0])


def plan_train_step(
    config: ml_collections.ConfigDict,
    *,
    inputs: str = "latents",
    devices: list | None = None,
    flops: float | None = None,
) -> Plan:
    """Compiles the train step of `config` for the mesh `config.mesh` over `devices`; `flops`:
    the step's FLOPs if already counted (`step_flops`), else counted here."""
    mesh = make_mesh(config.mesh, devices)
    rules = axis_rules(config)
    system = plan_system(config, inputs)
    data_sharding = batch_sharding(mesh)
    replicas = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.batch_size // int(config.optim.grad_accum)
    if micro % replicas:
        raise ConfigError(
            f"config.batch_size={config.batch_size} / config.optim.grad_accum="
            f"{config.optim.grad_accum} does not split over the {replicas} "
            f"data x fsdp shards of mesh {dict(mesh.shape)}"
        )
    batch = abstract_batch(system, config.batch_size, data_sharding)
    tx, state = abstract_state(system, config, mesh, rules)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(
        make_train_step(system, tx, config),
        in_shardings=(state_shardings, data_sharding),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )
    start = time.time()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = step.lower(state, batch).compile()
    seconds = time.time() - start
    mem = compiled.memory_analysis()
    total = (
        mem.argument_size_in_bytes
        + mem.temp_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.generated_code_size_in_bytes
    )
    return Plan(
        mesh=dict(mesh.shape),
        batch_size=config.batch_size,
        per_device_batch=config.batch_size / replicas,
        grad_accum=int(config.optim.grad_accum),
        remat=config.model.remat,
        params=_bytes_per_device(state.params),
        opt_state=_bytes_per_device(state.opt_state),
        ema=_bytes_per_device(state.ema_params) if state.ema_params is not None else 0,
        frozen_base=_bytes_per_device(state.frozen) if state.frozen is not None else 0,
        batch=_bytes_per_device(batch),
        temp=int(mem.temp_size_in_bytes),
        total=int(total),
        flops=step_flops(system, config, batch) if flops is None else flops,
        compile_seconds=seconds,
        frozen_text=frozen_text_bytes(config) if inputs == "latents" else 0,
    )


def _heading(plan: Plan) -> str:
    mesh = ",".join(f"{k}={v}" for k, v in plan.mesh.items())
    micro = (
        ""
        if plan.grad_accum == 1
        else f" in {plan.grad_accum} microbatches of {plan.per_device_batch / plan.grad_accum:g}"
    )
    return (
        f"mesh {mesh} ({plan.devices} devices), global batch {plan.batch_size} "
        f"({plan.per_device_batch:g} per data x fsdp shard{micro}), remat {plan.remat}"
    )


def _rows(plan: Plan) -> list[tuple[str, int]]:
    lora = [("frozen base (LoRA)", plan.frozen_base)] if plan.frozen_base else []
    return [
        ("parameters" if not lora else "trained parameters", plan.params),
        *lora,
        ("optimizer state", plan.opt_state),
        ("EMA parameters", plan.ema),
        ("batch", plan.batch),
        ("activations + temporaries", plan.temp),
        ("total", plan.total),
    ] + (
        [
            ("+ frozen text encoder", plan.frozen_text),  # latent runs load it only to sample
            ("total with it resident", plan.total + plan.frozen_text),
        ]
        if plan.frozen_text
        else []
    )


def format_plan(plan: Plan, hbm_gib: float = 0.0) -> str:
    """The plan as a small table; with `hbm_gib`, whether it fits that much device memory."""
    lines = [_heading(plan), f"{'per device':<28}{'GiB':>10}"]
    lines += [f"  {name:<26}{size / GiB:>10.2f}" for name, size in _rows(plan)]
    lines.append(f"FLOPs per step {plan.flops:.3e} ({plan.flops / plan.devices:.3e} per device)")
    lines.append(f"compiled in {plan.compile_seconds:.0f} s")
    if hbm_gib:
        resident = [(" with the text encoder resident", plan.total + plan.frozen_text)]
        totals = [("", plan.total)] + (resident if plan.frozen_text else [])
        for what, total in totals:
            verdict = "fits" if total <= hbm_gib * GiB else "does NOT fit"
            lines.append(
                f"{verdict} in {hbm_gib:g} GiB per device{what} "
                f"({100 * total / (hbm_gib * GiB):.0f}% used)"
            )
    return "\n".join(lines)


# ---- attention kernels side by side

# What the splash column measures off TPU (where `plan` compiles).
SPLASH_NOTE = (
    "splash: the Pallas TPU kernel as the Pallas interpreter lowers it for XLA:CPU "
    "(its grid a loop over whole arrays, where a TPU keeps each tile in VMEM); the "
    "blockwise column is the flash-memory reference compiled the same way"
)


def attention_kernels(
    config: ml_collections.ConfigDict, requested: Sequence[str] | None = None
) -> list[str]:
    """The `model.attention` kernels to plan: `requested` (`--attention`), else the config's,
    with 'blockwise' beside 'splash' (splash's figures off TPU are the interpreter's)."""
    from harmony_jax.model.attention import IMPLEMENTATIONS

    kernels = list(requested) if requested else [str(config.model.attention)]
    for kernel in kernels:
        if kernel not in IMPLEMENTATIONS:
            raise FlagError(f"--attention {kernel!r} is not one of {IMPLEMENTATIONS}")
        if kernel == "cudnn":
            raise FlagError(
                "--attention cudnn: plan compiles for CPU devices, which have no "
                "cuDNN (plan 'auto' or 'blockwise' for a GPU run's memory)"
            )
    if not requested and kernels == ["splash"]:
        kernels.append("blockwise")
    return list(dict.fromkeys(kernels))


def plan_attentions(
    config: ml_collections.ConfigDict,
    kernels: Sequence[str],
    *,
    inputs: str = "latents",
    devices: list | None = None,
) -> dict[str, Plan]:
    """One compiled plan per attention kernel, the step otherwise the same (FLOPs counted once:
    `step_flops` counts plain attention whatever the kernel)."""
    plans, flops = {}, None
    for kernel in kernels:
        c = ml_collections.ConfigDict(config.to_dict())
        c.model.attention = kernel
        plans[kernel] = plan_train_step(c, inputs=inputs, devices=devices, flops=flops)
        flops = plans[kernel].flops
    return plans


def format_plans(plans: dict[str, Plan], hbm_gib: float = 0.0) -> str:
    """Plans of the same step under different attention kernels, one column each."""
    if len(plans) == 1:
        return format_plan(next(iter(plans.values())), hbm_gib)
    first = next(iter(plans.values()))
    width = max(12, *(len(k) + 2 for k in plans))
    cell = lambda values: "".join(f"{v:>{width}}" for v in values)
    lines = [_heading(first), f"{'per device GiB':<28}" + cell(plans)]
    for i, (name, _) in enumerate(_rows(first)):
        lines.append(f"  {name:<26}" + cell(f"{_rows(p)[i][1] / GiB:.2f}" for p in plans.values()))
    if hbm_gib:
        used = [p.total / (hbm_gib * GiB) for p in plans.values()]
        lines.append(
            f"{'fits in ' + format(hbm_gib, 'g') + ' GiB':<28}"
            + cell(f"{'yes' if u <= 1 else 'NO'} {100 * u:.0f}%" for u in used)
        )
    lines.append(
        f"{'compiled in (s)':<28}" + cell(f"{p.compile_seconds:.0f}" for p in plans.values())
    )
    lines.append(
        f"FLOPs per step {first.flops:.3e} ({first.flops / first.devices:.3e} per "
        "device; plain attention, the same for every kernel)"
    )
    if "splash" in plans:
        lines.append(SPLASH_NOTE)
    return "\n".join(lines)


# ---- command line


def apply_flags(
    config: ml_collections.ConfigDict, mesh: str | None, batch: int | None, remat: str | None
) -> ml_collections.ConfigDict:
    """A copy of `config` with the command line's mesh ('data=1,fsdp=64'), batch and remat."""
    config = ml_collections.ConfigDict(config.to_dict())
    if mesh:
        apply_mesh_flag(config.mesh, mesh)
    if batch is not None:
        config.batch_size = batch
    if remat is not None:
        config.model.remat = remat
    return config


def simulate_cpu_devices(count: int) -> None:
    """`count` CPU devices, set before JAX starts its backends (the CLI's first JAX call).

    Where the backends already run (a test session), their devices must be enough.
    """
    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        if jax.device_count() < count:
            raise FlagError(
                f"--devices {count}: JAX already started with {jax.device_count()} devices"
            ) from None


def run(
    config: ml_collections.ConfigDict,
    *,
    mesh: str | None = None,
    devices: int | None = None,
    batch: int | None = None,
    remat: str | None = None,
    inputs: str = "latents",
    hbm_gib: float = 0.0,
    attention: Sequence[str] | None = None,
    mode: str = "train",
    dtype: str = "bfloat16",
    quantize: str = "none",
) -> str:
    """What `python -m harmony_jax.plan` prints, for the command line's values."""
    if mode not in MODES:
        raise FlagError(f"--mode {mode!r} is not one of {MODES}")
    config = apply_flags(config, mesh, None if mode == "sample" else batch, remat)
    sizes = [int(config.mesh.get(a, 1)) for a in AXES] + [
        int(config.mesh.get(f"dcn_{a}", 1)) for a in ("data", "fsdp")
    ]
    if devices is None and -1 in sizes:
        raise FlagError(f"mesh {dict(config.mesh)} has a -1 axis: pass --devices")
    count = devices or math.prod(sizes)
    check_config(config, count)  # names the key before anything compiles
    kernels = attention_kernels(config, attention)
    if mode == "sample":
        use_cpu_xla_flags()
    simulate_cpu_devices(count)
    if mode == "sample":
        if len(kernels) > 1:
            raise FlagError("--mode sample plans one --attention kernel at a time")
        config.model.attention = kernels[0]
        planned = plan_sampler(
            config, dtype=dtype, quantize=quantize, clips=batch or 1, devices=jax.devices()[:count]
        )
        return format_sample_plan(planned, hbm_gib)
    plans = plan_attentions(config, kernels, inputs=inputs, devices=jax.devices()[:count])
    return format_plans(plans, hbm_gib)


def _define_flags() -> dict[str, flags.FlagHolder]:
    """The CLI's flags; defined only when run as a program (harmony_jax.train owns --config)."""
    holders = dict(
        config=config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py)."),
        mesh=flags.DEFINE_string(
            "mesh",
            None,
            "Mesh axis sizes, e.g. data=1,fsdp=64,tensor=1 "
            f"(axes {AXES}, dcn_data, dcn_fsdp); default: config.mesh.",
        ),
        devices=flags.DEFINE_integer(
            "devices",
            None,
            "Simulated devices; default: the product "
            "of the mesh sizes (needed when one of them is -1).",
        ),
        batch=flags.DEFINE_integer("batch", None, "Global batch; default: config.batch_size."),
        remat=flags.DEFINE_enum(
            "remat",
            None,
            ["full", "dots", "dots_no_batch", "none"],
            "Remat policy; default: config.model.remat.",
        ),
        inputs=flags.DEFINE_enum(
            "inputs",
            "latents",
            ["latents", "media"],
            "Plan the step on latents (no codecs) or on raw media.",
        ),
        hbm_gib=flags.DEFINE_float(
            "hbm_gib", 0.0, "Device memory to check the total against (GiB)."
        ),
        mode=flags.DEFINE_enum(
            "mode", "train", list(MODES), "Plan the train step or the sampler (sample)."
        ),
        dtype=flags.DEFINE_enum("dtype", "bfloat16", list(DTYPES), f"--mode sample: {DTYPE_HELP}"),
        quantize=flags.DEFINE_enum(
            "quantize", "none", list(QUANTIZE), f"--mode sample: {QUANTIZE_HELP}"
        ),
        attention=flags.DEFINE_list(
            "attention",
            None,
            "model.attention kernels to plan side "
            "by side, e.g. splash,blockwise; default: the config's "
            "(with blockwise beside splash).",
        ),
    )
    from harmony_jax.model.attention import IMPLEMENTATIONS

    kernels = [k for k in IMPLEMENTATIONS if k != "cudnn"]  # no cuDNN on the CPU devices
    flags.register_validator(
        "attention",
        lambda v: v is None or set(v) <= set(kernels),
        message=f"each kernel must be one of {kernels}",
    )
    return holders


if __name__ == "__main__":
    quiet_logs.install()
    _FLAGS = _define_flags()
    flags.mark_flags_as_required(["config"])
    app.run(
        reported_as_one_line(lambda argv: print(run(**{k: f.value for k, f in _FLAGS.items()}))),
        flags_parser=parse_flags,
    )
