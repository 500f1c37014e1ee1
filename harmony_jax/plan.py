"""Will it fit? Compile the real train step for a target mesh on CPU and read its memory.

    python -m harmony_jax.plan --config configs/harmony_5b.py --mesh data=1,fsdp=64,tensor=1 \
        [--batch 128] [--remat full|dots|dots_no_batch|none] [--inputs latents|media] \
        [--hbm_gib 95] [--config.optim.grad_accum=2 ...]

`make_train_step` (with the run's optimizer, EMA and CTS loss) is lowered and compiled on
abstract inputs (`jax.ShapeDtypeStruct`s with their `NamedSharding`s: no array is ever made) for
a mesh of that many simulated CPU devices. It prints per-device bytes from
`compiled.memory_analysis()`: parameters, optimizer state and EMA (from their shardings), the
batch, activations/temporaries, and the total, plus the FLOPs of one step.

Inputs (`--inputs`):
  latents  (default) the step of a run fed precomputed latents and text embeddings: the video and
           audio "codecs" are the identity on latents of the geometry the configured codecs imply
           (Wan2.2: stride 4x16x16, first frame alone, 48 channels; MMAudio 16 kHz: 31.25
           latents/s, 20 channels; umT5: `codecs.text.max_len` x `model.text_dim` embeddings), so
           no codec weights are needed and the codecs need not be ported yet. For
           harmony_5b: video [B, 31, 44, 80, 48] (27,280 tokens after the 1x2x2 patch),
           audio [B, 157, 20] + a 62-latent reference voice, text [B, 512, 4096] x 2.
  media    the step as `train.py` runs it on raw frames and waveforms (`build_system`): the codec
           encoders run inside the step. Needs the configured codecs to exist.

Caveats: XLA:CPU's buffer assignment and fusion differ from TPU/GPU, so treat the figures as a
close estimate. Attention is the configured kernel as it lowers off GPU: 'auto' (harmony_5b) is
the blockwise kernel, in the memory class of the flash kernels TPU and GPU run. FLOPs come from lowering the step unrolled at depth 1 and 2 and extrapolating
linearly in depth (XLA's cost analysis counts a loop body once); they include remat
recomputation and the optimizer.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from harmony_jax.codecs import interval_centres, make_audio_codec, make_video_codec
from harmony_jax.codecs.text import TranscriptTokenizer
from harmony_jax.config_cli import parse_flags
from harmony_jax.model import ModelConfig
from harmony_jax.parallel.mesh import AXES, apply_mesh_flag, make_mesh
from harmony_jax.parallel.sharding import (axis_rules, batch_sharding, logical_shardings,
                                           replicated)
from harmony_jax.parallel.state import train_state_shardings
from harmony_jax.system import System, build_system
from harmony_jax.training.optim import make_optimizer
from harmony_jax.training.step import create_train_state, make_train_step

GiB = 1024 ** 3


# ---- latent-space inputs: codecs reduced to their geometry, encode = identity

@dataclasses.dataclass(frozen=True)
class CausalVideoGeometry:
    """Wan2.2 VAE geometry: the first frame is a latent on its own, then `stride[0]` frames per
    latent; `stride[1:]` pixels per latent cell. A latent's time is its frames' mean time."""

    fps: float
    stride: tuple[int, int, int] = (4, 16, 16)

    @property
    def latent_rate(self) -> float:
        return self.fps / self.stride[0]

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        st, sh, sw = self.stride
        if (num_frames - 1) % st or height % sh or width % sw:
            raise ValueError(f"config.data: {num_frames} frames of {height}x{width} do not fit "
                             f"the video codec's stride {self.stride} (frames = 1 + {st}k)")
        return 1 + (num_frames - 1) // st, height // sh, width // sw

    def frame_times(self, num_latent_frames: int) -> np.ndarray:
        st = self.stride[0]
        later = (st * np.arange(1, num_latent_frames) - (st - 1) / 2) / self.fps
        return np.concatenate([[0.0], later])  # [Tv]


@dataclasses.dataclass(frozen=True)
class FramedAudioGeometry:
    """A waveform codec with one latent per `hop` samples (MMAudio 16 kHz: hop 512)."""

    sample_rate: int
    hop: int

    @property
    def latent_rate(self) -> float:
        return self.sample_rate / self.hop

    def num_latent_frames(self, num_samples: int) -> int:
        return num_samples // self.hop

    def frame_times(self, num_latent_frames: int) -> np.ndarray:
        return interval_centres(num_latent_frames, self.latent_rate)


def _mmaudio(config: ml_collections.ConfigDict) -> FramedAudioGeometry:
    if config.data.sample_rate != 16000:
        raise ValueError(f"config.data.sample_rate={config.data.sample_rate}: the 'mmaudio' "
                         "codec is the 16 kHz MMAudio VAE")
    return FramedAudioGeometry(sample_rate=16000, hop=512)


# Published codecs by their geometry alone; any other name is built and its geometry read.
_VIDEO_GEOMETRY = {"wan2.2": lambda config: CausalVideoGeometry(fps=float(config.data.fps))}
_AUDIO_GEOMETRY = {"mmaudio": _mmaudio}


@dataclasses.dataclass(frozen=True)
class LatentCodec:
    """A codec whose inputs already are latents: `geometry`'s shapes and times, identity encode."""

    geometry: Any
    latent_channels: int

    @property
    def latent_rate(self) -> float:
        return self.geometry.latent_rate

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        return self.geometry.latent_shape(num_frames, height, width)

    def num_latent_frames(self, num_samples: int) -> int:
        return self.geometry.num_latent_frames(num_samples)

    def frame_times(self, num_latent_frames: int) -> np.ndarray:
        return self.geometry.frame_times(num_latent_frames)

    def encode(self, latents: jax.Array) -> jax.Array:
        return latents


class _Embeddings(nn.Module):
    """The 'text encoder' of precomputed embeddings: its input already is the output."""

    @nn.compact
    def __call__(self, embeddings: jax.Array) -> jax.Array:
        return embeddings


@dataclasses.dataclass(frozen=True)
class PrecomputedText:
    max_len: int
    dim: int
    trainable: bool = False
    module: nn.Module = dataclasses.field(default_factory=_Embeddings)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Zero embeddings [B, L, Dt] with one real token: only their shapes matter here (the
        empty prompt of caption dropout), which a real encoder's would share."""
        mask = np.zeros((len(texts), self.max_len), bool)
        mask[:, 0] = True
        return np.zeros((len(texts), self.max_len, self.dim), np.float32), mask


def latent_system(config: ml_collections.ConfigDict) -> System:
    """A `System` trained on latents and text embeddings of the geometry `config.codecs` implies.

    Channel counts are the model's (`model.video.in_channels`, `model.audio.in_channels`); the
    text 'ids' of a batch are embeddings [B, codecs.text.max_len, model.text_dim].
    """
    video_name, audio_name = config.codecs.video.name, config.codecs.audio.name
    video = _VIDEO_GEOMETRY[video_name](config) if video_name in _VIDEO_GEOMETRY \
        else make_video_codec(config)
    audio = _AUDIO_GEOMETRY[audio_name](config) if audio_name in _AUDIO_GEOMETRY \
        else make_audio_codec(config)
    m = config.model
    video_codec = LatentCodec(video, int(m.video.in_channels))
    model_config = ModelConfig.from_config(m, video_latent_rate=video_codec.latent_rate)
    return System(
        config=config, model_config=model_config, video_codec=video_codec,
        audio_codec=LatentCodec(audio, int(m.audio.in_channels)),
        text_encoder=PrecomputedText(max_len=int(config.codecs.text.max_len), dim=int(m.text_dim)),
        transcript_tokenizer=TranscriptTokenizer(model_config.transcript.max_len))


def abstract_batch(system: System, batch_size: int, inputs: str,
                   sharding: Optional[jax.sharding.Sharding] = None
                   ) -> dict[str, jax.ShapeDtypeStruct]:
    """One global batch as ShapeDtypeStructs: raw media (`inputs='media'`) or latents.

    A reference voice (`data.ref_audio_seconds` > 0) is included as the paper trains with one.
    """
    config = system.config
    ref_samples = int(round(config.data.ref_audio_seconds * config.data.sample_rate))
    batch = system.example_batch(batch_size)
    if inputs == "media":
        if ref_samples:
            batch["ref_audio"] = jax.ShapeDtypeStruct((batch_size, ref_samples), jnp.float32)
    elif inputs == "latents":
        S = jax.ShapeDtypeStruct
        text = S((batch_size, system.text_len, system.text_encoder.dim), jnp.float32)
        batch.update(video=S((batch_size, *system.video_latent_shape), jnp.float32),
                     audio=S((batch_size, *system.audio_latent_shape), jnp.float32),
                     video_text_ids=text, audio_text_ids=text)
        if ref_samples:
            batch["ref_audio"] = S((batch_size, system.audio_codec.num_latent_frames(ref_samples),
                                    system.audio_latent_shape[1]), jnp.float32)
    else:
        raise ValueError(f"--inputs={inputs!r} is not one of ('latents', 'media')")
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
            for k, v in batch.items()}


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

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())


def _bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                   for x in jax.tree.leaves(tree)))


def _with_shardings(shapes: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def abstract_state(system: System, config: ml_collections.ConfigDict, mesh, rules,
                   inputs: str):
    """(optimizer, train state as sharded ShapeDtypeStructs), laid out as training lays it out:
    parameters by their logical axes, their copies alike (`parallel.state`)."""
    example = abstract_batch(system, 1, inputs)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(system.init, jax.random.key(0), example)
        shardings = logical_shardings(boxed, mesh, rules)
    # unboxed outside the mesh: inside, unboxing constrains (and so needs real arrays)
    param_shardings = nn.meta.unbox(shardings)
    params = _with_shardings(nn.meta.unbox(boxed), param_shardings)
    tx = make_optimizer(config.optim, params, config.total_steps)
    state = jax.eval_shape(lambda p: create_train_state(p, tx, config.optim.ema_decay > 0),
                           params)
    return tx, _with_shardings(state, train_state_shardings(state, param_shardings, mesh))


def step_flops(system: System, config: ml_collections.ConfigDict, batch: dict) -> float:
    """FLOPs of one train step (global), counted where XLA's cost analysis sees every operation:
    layers unrolled (at depth 1 and 2, extrapolated), no microbatch loop (the same FLOPs), and
    plain attention (a blockwise kernel's loops would be counted once; the usual convention,
    not counting a flash backward's recomputed scores)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.optim.grad_accum = 1
    flops = []
    for depth in (1, 2):
        cfg = dataclasses.replace(system.model_config, depth=depth, scan_layers=False,
                                  attention="xla")
        sys_d = dataclasses.replace(system, model_config=cfg)
        example = {k: jax.ShapeDtypeStruct((1, *v.shape[1:]), v.dtype) for k, v in batch.items()}
        params = nn.meta.unbox(jax.eval_shape(sys_d.init, jax.random.key(0), example))
        tx = make_optimizer(config.optim, params, config.total_steps)
        state = jax.eval_shape(lambda p: create_train_state(p, tx, config.optim.ema_decay > 0),
                               params)
        plain = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
        cost = jax.jit(make_train_step(sys_d, tx, config)).lower(state, plain).cost_analysis()
        flops.append(float(cost["flops"]))
    return flops[0] + (system.model_config.depth - 1) * (flops[1] - flops[0])


def plan_train_step(config: ml_collections.ConfigDict, *, inputs: str = "latents",
                    devices: Optional[list] = None) -> Plan:
    """Compiles the train step of `config` for the mesh `config.mesh` over `devices`."""
    mesh = make_mesh(config.mesh, devices)
    rules = axis_rules(config)
    system = latent_system(config) if inputs == "latents" else build_system(config)
    data_sharding = batch_sharding(mesh)
    replicas = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.batch_size // int(config.optim.grad_accum)
    if micro % replicas:
        raise ValueError(f"config.batch_size={config.batch_size} / config.optim.grad_accum="
                         f"{config.optim.grad_accum} does not split over the {replicas} "
                         f"data x fsdp shards of mesh {dict(mesh.shape)}")
    batch = abstract_batch(system, config.batch_size, inputs, data_sharding)
    tx, state = abstract_state(system, config, mesh, rules, inputs)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(make_train_step(system, tx, config),
                   in_shardings=(state_shardings, data_sharding),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)
    start = time.time()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = step.lower(state, batch).compile()
    seconds = time.time() - start
    mem = compiled.memory_analysis()
    total = (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
             - mem.alias_size_in_bytes + mem.generated_code_size_in_bytes)
    return Plan(
        mesh=dict(mesh.shape), batch_size=config.batch_size,
        per_device_batch=config.batch_size / replicas, grad_accum=int(config.optim.grad_accum),
        remat=config.model.remat,
        params=_bytes_per_device(state.params), opt_state=_bytes_per_device(state.opt_state),
        ema=_bytes_per_device(state.ema_params) if state.ema_params is not None else 0,
        batch=_bytes_per_device(batch), temp=int(mem.temp_size_in_bytes), total=int(total),
        flops=step_flops(system, config, batch), compile_seconds=seconds)


def format_plan(plan: Plan, hbm_gib: float = 0.0) -> str:
    """The plan as a small table; with `hbm_gib`, whether it fits that much device memory."""
    mesh = ",".join(f"{k}={v}" for k, v in plan.mesh.items())
    rows = [("parameters", plan.params), ("optimizer state", plan.opt_state),
            ("EMA parameters", plan.ema), ("batch", plan.batch),
            ("activations + temporaries", plan.temp), ("total", plan.total)]
    micro = "" if plan.grad_accum == 1 else \
        f" in {plan.grad_accum} microbatches of {plan.per_device_batch / plan.grad_accum:g}"
    lines = [f"mesh {mesh} ({plan.devices} devices), global batch {plan.batch_size} "
             f"({plan.per_device_batch:g} per data x fsdp shard{micro}), remat {plan.remat}",
             f"{'per device':<28}{'GiB':>10}"]
    lines += [f"  {name:<26}{size / GiB:>10.2f}" for name, size in rows]
    lines.append(f"FLOPs per step {plan.flops:.3e} ({plan.flops / plan.devices:.3e} per device)")
    lines.append(f"compiled in {plan.compile_seconds:.0f} s")
    if hbm_gib:
        verdict = "fits" if plan.total <= hbm_gib * GiB else "does NOT fit"
        lines.append(f"{verdict} in {hbm_gib:g} GiB per device "
                     f"({100 * plan.total / (hbm_gib * GiB):.0f}% used)")
    return "\n".join(lines)


# ---- command line


def apply_flags(config: ml_collections.ConfigDict, mesh: Optional[str], batch: Optional[int],
                remat: Optional[str]) -> ml_collections.ConfigDict:
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
            raise ValueError(f"--devices {count}: JAX already started with "
                             f"{jax.device_count()} devices") from None


def run(config: ml_collections.ConfigDict, *, mesh: Optional[str] = None,
        devices: Optional[int] = None, batch: Optional[int] = None, remat: Optional[str] = None,
        inputs: str = "latents", hbm_gib: float = 0.0) -> str:
    """What `python -m harmony_jax.plan` prints, for the command line's values."""
    config = apply_flags(config, mesh, batch, remat)
    sizes = [int(config.mesh.get(a, 1)) for a in AXES] + \
        [int(config.mesh.get(f"dcn_{a}", 1)) for a in ("data", "fsdp")]
    if devices is None and -1 in sizes:
        raise ValueError(f"mesh {dict(config.mesh)} has a -1 axis: pass --devices")
    count = devices or math.prod(sizes)
    simulate_cpu_devices(count)
    plan = plan_train_step(config, inputs=inputs, devices=jax.devices()[:count])
    return format_plan(plan, hbm_gib)


def _define_flags() -> dict[str, flags.FlagHolder]:
    """The CLI's flags; defined only when run as a program (harmony_jax.train owns --config)."""
    return dict(
        config=config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py)."),
        mesh=flags.DEFINE_string("mesh", None, "Mesh axis sizes, e.g. data=1,fsdp=64,tensor=1 "
                                 f"(axes {AXES}, dcn_data, dcn_fsdp); default: config.mesh."),
        devices=flags.DEFINE_integer("devices", None, "Simulated devices; default: the product "
                                     "of the mesh sizes (needed when one of them is -1)."),
        batch=flags.DEFINE_integer("batch", None, "Global batch; default: config.batch_size."),
        remat=flags.DEFINE_enum("remat", None, ["full", "dots", "dots_no_batch", "none"],
                                "Remat policy; default: config.model.remat."),
        inputs=flags.DEFINE_enum("inputs", "latents", ["latents", "media"],
                                 "Plan the step on latents (no codecs) or on raw media."),
        hbm_gib=flags.DEFINE_float("hbm_gib", 0.0, "Device memory to check the total "
                                   "against (GiB)."))


if __name__ == "__main__":
    _FLAGS = _define_flags()
    flags.mark_flags_as_required(["config"])
    app.run(lambda argv: print(run(**{k: f.value for k, f in _FLAGS.items()})),
            flags_parser=parse_flags)
