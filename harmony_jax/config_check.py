"""Every run-config value checked when the config is loaded, before any model is built.

`config_cli` checks that an override names a key and has its type; this checks that the value
is one the code accepts: a name from the tuple the consuming module defines (imported here, never
copied), a positive count, a 3-int patch, a batch the mesh can split. A bad value raises
`ConfigError` naming the key, the value and what is allowed, in one line; without the check most
of these end deep in model building or after the first step (`checkpoint_every=0`).
"""

from __future__ import annotations

import math
import re
from typing import Any

import ml_collections

from harmony_jax.codecs import NAMES as CODEC_NAMES
from harmony_jax.data.pipeline import SOURCES
from harmony_jax.data.sounding_shapes import PALETTE, is_palette
from harmony_jax.diffusion.cts import MODES as CTS_MODES
from harmony_jax.diffusion.flow import LOSSES, PREDICTIONS, SIGMA_SAMPLINGS
from harmony_jax.diffusion.sampler import SOLVERS
from harmony_jax.diffusion.syncfg import GUIDANCES
from harmony_jax.errors import ConfigError
from harmony_jax.model.attention import IMPLEMENTATIONS
from harmony_jax.model.config import INTERACTIONS, REMAT_POLICIES
from harmony_jax.model.position import POS_EMBEDS
from harmony_jax.parallel.mesh import dcn_shape, resolve_mesh_shape
from harmony_jax.training.optim import ON_NONFINITE, SCHEDULES

DTYPES = ("float32", "bfloat16", "float16")  # model.dtype / model.param_dtype

_MISSING = object()
_CHOICES = {
    "model.remat": REMAT_POLICIES,
    "model.attention": IMPLEMENTATIONS,
    "model.interaction.mode": INTERACTIONS,
    "model.video.pos_embed": POS_EMBEDS,
    "model.dtype": DTYPES,
    "model.param_dtype": DTYPES,
    "data.source": SOURCES,
    "codecs.video.name": CODEC_NAMES["video"],
    "codecs.audio.name": CODEC_NAMES["audio"],
    "codecs.text.name": CODEC_NAMES["text"],
    "flow.prediction": PREDICTIONS,
    "flow.sigma_sampling": SIGMA_SAMPLINGS,
    "flow.loss": LOSSES,
    "cts.mode": CTS_MODES,
    "sample.guidance": GUIDANCES,
    "sample.solver": SOLVERS,
    "optim.schedule": SCHEDULES,
    "optim.on_nonfinite": ON_NONFINITE,
    "lora.base_dtype": ("float32", "bfloat16"),
}
_AT_LEAST = {  # key -> smallest allowed integer (total_steps=0: build, import, stop)
    "total_steps": 0,
    "checkpoint_every": 1,
    "keep_checkpoints": 1,
    "log_every": 1,
    "sample_every": 0,
    "num_sample_clips": 1,
    "batch_size": 1,
    "model.depth": 1,
    "model.text_dim": 1,
    "model.freq_dim": 1,
    "model.video.dim": 1,
    "model.video.heads": 1,
    "model.video.ffn_dim": 1,
    "model.video.in_channels": 1,
    "model.audio.dim": 1,
    "model.audio.heads": 1,
    "model.audio.ffn_dim": 1,
    "model.audio.in_channels": 1,
    "model.transcript.vocab_size": 1,
    "model.transcript.dim": 1,
    "model.transcript.max_len": 1,
    "model.transcript.conv_layers": 0,
    "model.transcript.conv_mult": 1,
    "data.num_frames": 1,
    "data.height": 1,
    "data.width": 1,
    "data.sample_rate": 1,
    "data.num_clips": 1,
    "data.num_workers": 0,
    "codecs.text.max_len": 1,
    "codecs.text.vocab_size": 1,
    "sample.steps": 1,
    "optim.warmup_steps": 0,
    "optim.grad_accum": 1,
    "lora.rank": 0,
}
_POSITIVE = ("data.fps", "optim.lr", "flow.shift", "sample.shift", "lora.alpha")  # finite and > 0
_FRACTIONS = (
    "cts.ref_image_prob",
    "cts.caption_dropout",
    "optim.end_lr_fraction",
    "data.ref_audio_seconds",
)  # finite and >= 0 (the first three also <= 1)


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    value = config
    for part in key.split("."):
        if not isinstance(value, ml_collections.ConfigDict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"config.{key}={value!r}: {allowed}")


def _check_values(config: ml_collections.ConfigDict) -> None:
    for key, choices in _CHOICES.items():
        value = _get(config, key)
        if value is not _MISSING and value not in choices:
            _fail(key, value, f"expected one of {', '.join(map(repr, choices))}")
    for key, low in _AT_LEAST.items():
        value = _get(config, key)
        if value is not _MISSING and (not _is_int(value) or value < low):
            _fail(key, value, f"expected an integer >= {low}")
    for key in _POSITIVE:
        value = _get(config, key)
        if value is not _MISSING and not (_is_number(value) and math.isfinite(value) and value > 0):
            _fail(key, value, "expected a finite number > 0")
    for key in _FRACTIONS:
        value = _get(config, key)
        top = math.inf if key == "data.ref_audio_seconds" else 1.0
        if value is not _MISSING and not (_is_number(value) and 0 <= value <= top):
            _fail(key, value, "expected a number >= 0" + ("" if top == math.inf else " and <= 1"))
    radius = _get(config, "data.ball_radius")  # two balls side by side, with room to move
    if radius is not _MISSING and not (_is_number(radius) and 0 < radius < 0.25):
        _fail("data.ball_radius", radius, "expected a number > 0 and < 0.25 (of the short side)")
    schedule, warmup = _get(config, "optim.schedule"), _get(config, "optim.warmup_steps")
    total = _get(config, "total_steps")
    if schedule == "cosine" and _is_int(warmup) and _is_int(total) and total <= warmup:
        _fail(
            "total_steps",
            total,
            f"optim.schedule='cosine' needs more than optim.warmup_steps={warmup}",
        )
    balls = _get(config, "data.max_balls")
    if balls is not _MISSING and not (_is_int(balls) and balls in (1, 2)):
        _fail("data.max_balls", balls, "expected 1 or 2")
    colors = _get(config, "data.colors")
    if colors is not _MISSING and not is_palette(colors):
        _fail("data.colors", colors, f"expected distinct names of {', '.join(PALETTE)}")
    ema = _get(config, "optim.ema_decay")
    if ema is not _MISSING and not (_is_number(ema) and 0 <= ema < 1):
        _fail("optim.ema_decay", ema, "expected a number >= 0 and < 1 (0: no EMA)")
    correlation = _get(config, "flow.frame_noise_correlation")
    if correlation is not _MISSING and not (_is_number(correlation) and 0 <= correlation < 1):
        _fail(
            "flow.frame_noise_correlation",
            correlation,
            "expected a number >= 0 and < 1 (0: independent noise per frame)",
        )
    theta = _get(config, "model.video.rope_theta")
    if theta is not _MISSING and not (_is_number(theta) and math.isfinite(theta) and theta > 1):
        _fail("model.video.rope_theta", theta, "expected a finite number > 1 (Wan: 10000)")
    patch = _get(config, "model.video.patch")
    if patch is not _MISSING and not (
        isinstance(patch, (tuple, list))
        and len(patch) == 3
        and all(_is_int(p) and p >= 1 for p in patch)
    ):
        _fail("model.video.patch", patch, "expected 3 positive integers (frames, height, width)")
    fractions = _get(config, "cts.fractions")
    if fractions is not _MISSING and not (
        isinstance(fractions, (tuple, list))
        and len(fractions) == 3
        and all(_is_number(f) and f >= 0 for f in fractions)
        and sum(fractions) > 0
    ):
        _fail(
            "cts.fractions",
            fractions,
            "expected 3 numbers >= 0 (joint, a2v, v2a) with a positive sum",
        )
    _check_lora(config)
    for tower in ("video", "audio"):
        dim, heads = _get(config, f"model.{tower}.dim"), _get(config, f"model.{tower}.heads")
        if _is_int(dim) and _is_int(heads) and dim % heads:
            _fail(f"model.{tower}.dim", dim, f"expected a multiple of model.{tower}.heads={heads}")


def _check_lora(config: ml_collections.ConfigDict) -> None:
    """config.lora's regexes compile, its dropout is a rate, and init.base_from has a LoRA run
    to be the base of (what the regexes match is checked against the model, `training.lora`)."""
    for key in ("lora.targets", "lora.train_also"):
        value = _get(config, key)
        if value is _MISSING:
            continue
        if not isinstance(value, str):
            _fail(key, value, "expected a regex string")
        try:
            re.compile(value)
        except re.error as e:
            _fail(key, value, f"not a regex ({e})")
    dropout = _get(config, "lora.dropout")
    if dropout is not _MISSING and not (_is_number(dropout) and 0 <= dropout < 1):
        _fail("lora.dropout", dropout, "expected a number >= 0 and < 1")
    rank, base = _get(config, "lora.rank"), _get(config, "init.base_from")
    if rank is _MISSING or base is _MISSING:
        return
    if rank > 0 and not _get(config, "lora.targets"):
        _fail("lora.targets", "", "a LoRA run (lora.rank > 0) needs kernels to adapt")
    if base and rank == 0:
        _fail("init.base_from", base, "is the frozen base of a LoRA run: set config.lora.rank > 0")
    start = _get(config, "init.params_from")
    if start and rank > 0:
        _fail(
            "init.params_from",
            start,
            "starts a full run (lora.rank 0); a LoRA run names its frozen base in init.base_from",
        )
    for key in ("init.video_from", "init.transcript_from"):
        if start and _get(config, key):
            _fail(key, _get(config, key), f"config.init.params_from={start} brings every weight")
    if base and _get(config, "init.video_from"):
        _fail(
            "init.video_from",
            _get(config, "init.video_from"),
            f"the base run (config.init.base_from={base}) brings its own video tower; "
            "leave init.base_from empty to start the base from this tower",
        )


def batch_shards(config: ml_collections.ConfigDict, num_devices: int) -> int:
    """How many ways the mesh splits the global batch (data x fsdp, over every slice)."""
    try:
        sizes = resolve_mesh_shape(config.mesh, num_devices)
        slices = dcn_shape(config.mesh)
    except ValueError as e:
        raise ConfigError(f"{e} (config.mesh, {num_devices} devices)") from None
    return math.prod(sizes[a] * slices[a] for a in ("data", "fsdp") if a in sizes)


def check_config(
    config: ml_collections.ConfigDict, num_devices: int | None = None, *, reads_data: bool = False
) -> None:
    """Raises ConfigError on the first value the run cannot use; with `num_devices`, also a mesh
    that does not fit them or a batch its data x fsdp axes do not divide; with `reads_data`
    (training, encoding), a `data.source` that reads a folder without `data.root`."""
    _check_values(config)
    source, root = _get(config, "data.source"), _get(config, "data.root")
    if reads_data and source in ("clip_folder", "latents") and not root:
        _fail(
            "data.root",
            root,
            f"data.source={source!r} needs the folder it reads (--config.data.root=DIR)",
        )
    if num_devices is not None:
        shards = batch_shards(config, num_devices)
        if config.batch_size % shards:
            _fail(
                "batch_size",
                config.batch_size,
                f"expected a multiple of the mesh's {shards} batch shards (mesh.data x "
                f"mesh.fsdp over {num_devices} devices)",
            )
