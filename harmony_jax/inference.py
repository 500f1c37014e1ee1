"""From a trained run and a user's media files to the sampler's inputs.

`load_for_inference` restores only the parameters (EMA when the run kept them) from the latest
checkpoint of a workdir or from one step directory, with the config saved beside it: no
optimizer state is read. They are read straight into their shards on a mesh of this host's
devices, in the dtype asked for. The `read_*` functions fit a user's audio, video or image to the
clip geometry of that config (`config.data`), logging a notice for every change they make, and
raise `MediaError` naming the file when it cannot be used.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from typing import Any

import av
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import librosa
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from harmony_jax.compile_cache import DEFAULT_DIR, enable_compile_cache
from harmony_jax.errors import CheckpointError, FlagError, one_line
from harmony_jax.media import MediaError, unit_range
from harmony_jax.media_window import read_soundtrack, read_window
from harmony_jax.parallel.mesh import apply_mesh_flag, make_mesh, resolve_mesh_shape
from harmony_jax.parallel.sharding import axis_rules, logical_shardings
from harmony_jax.quantize import QUANTIZE, is_quantized, quantize_leaf, quantized_system
from harmony_jax.system import System, build_system
from harmony_jax.training.checkpoint import (
    CheckpointMismatchError,
    check_params,
    damage,
    damaged_file,
    newest_intact,
    read_config,
    read_config_file,
    steps_in,
)
from harmony_jax.training.lora import restore_merged
from harmony_jax.units import GiB

Params = Any


DTYPES = ("bfloat16", "float32")
DTYPE_HELP = "dtype of the weights while sampling (the latents stay float32)"
QUANTIZE_HELP = (
    "int8: every Dense kernel of the DiT (and of a frozen text encoder) held as int8 with a "
    "scale per output channel, dequantized in the matmul (about half bfloat16's bytes)"
)
# Axes `--mesh` leaves out are 1, except fsdp, which takes the remaining devices: parameters
# split over every device is what lets a model that fits no single device sample at all.
_INFERENCE_MESH = dict(data=1, fsdp=1, sequence=1, tensor=1, dcn_data=1, dcn_fsdp=1)


def inference_mesh(spec: str | None, devices: Sequence[jax.Device]) -> dict[str, int]:
    """Mesh sizes over `devices` from `--mesh`'s 'fsdp=4,tensor=2' (None: all of them on fsdp).

    Keys and values are checked as `plan --mesh` checks them; the error names the flag.
    """
    sizes = ml_collections.ConfigDict(dict(_INFERENCE_MESH))
    if spec:
        apply_mesh_flag(sizes, spec)
    if -1 not in sizes.values() and not (
        spec and "fsdp" in [item.partition("=")[0].strip() for item in spec.split(",")]
    ):
        sizes.fsdp = -1
    try:
        sizes.update(resolve_mesh_shape(sizes, len(devices)))
    except ValueError as e:
        raise FlagError(f"--mesh {spec!r} over {len(devices)} devices: {e}") from None
    return sizes.to_dict()


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """`--mesh`, `--dtype`, `--quantize` and `--lora_base`, spelled and explained alike by
    every entry point that loads a run to sample from it (`sample`, `evaluate`);
    `load_for_inference` takes them as they are parsed."""
    parser.add_argument(
        "--mesh",
        help="device mesh for the parameters and the sampler, e.g. "
        "fsdp=4,tensor=2 (keys data, fsdp, sequence, tensor; left out: 1, fsdp takes "
        "the remaining devices); default: every local device on fsdp",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help=DTYPE_HELP)
    parser.add_argument("--quantize", choices=QUANTIZE, default="none", help=QUANTIZE_HELP)
    parser.add_argument(
        "--lora_base",
        help="a LoRA run's base run where it is now, if it moved since training (its hash "
        "is checked against the one the run recorded)",
    )


def load_for_inference(
    path: str | os.PathLike,
    *,
    mesh: str | None = None,
    dtype: str = "bfloat16",
    quantize: str = "none",
    devices: Sequence[jax.Device] | None = None,
    lora_base: str | None = None,
) -> tuple[System, Params]:
    """(system, params) from a workdir (its newest intact checkpoint) or a checkpoint step
    directory; a LoRA run's adapters merged into its base (`lora_base`: where that base run is
    now, if it moved).

    The parameters are restored straight into their shards, laid out by the run's logical axis
    rules (`config.axis_rules`, as training lays them out) on the mesh `mesh` describes
    ('fsdp=4,tensor=2'; see `inference_mesh`) over `devices` (default: this host's), and cast
    to `dtype` as they are read; with `quantize='int8'` every Dense kernel is read in float32
    and kept as int8 with per-output-channel scales (`harmony_jax.quantize`; the returned system
    samples with them), a chunk at a time, so the float tree is never whole in memory.
    `system.axis_rules` are the rules for that mesh; `generation`
    samples under that mesh. EMA parameters are preferred when the run kept them: averaged
    weights are the ones meant for sampling. In a workdir a damaged step is named in a warning
    and the previous one used; a damaged step directory given as such is refused, naming the
    file and the other steps. Compiled programs are cached in the user's own cache
    (JAX_COMPILATION_CACHE_DIR, else DEFAULT_DIR), never in a directory the run's saved config
    names.
    """
    if dtype not in DTYPES:
        raise FlagError(f"--dtype {dtype!r} is not one of {DTYPES}")
    enable_compile_cache(DEFAULT_DIR)  # the sampler's compile
    devices = list(jax.local_devices() if devices is None else devices)
    sizes = inference_mesh(mesh, devices)  # a bad --mesh is named before any step is read
    if quantize not in QUANTIZE:
        raise FlagError(f"--quantize {quantize!r} is not one of {QUANTIZE}")
    if lora_base:  # named before any step is read
        config = read_config(os.fspath(path))[0]
        if not (config.lora.rank and config.init.base_from):
            what = "no LoRA run"
            if config.lora.rank:
                what = "a LoRA run over its own init, not over another run"
            raise FlagError(f"--lora_base {lora_base}: {path} is {what}")
    load = lambda step_dir: _load_step(step_dir, sizes, dtype, quantize, devices, lora_base)
    path = epath.Path(os.fspath(path)).absolute()
    if (path / "config").exists():  # a checkpoint step directory
        try:
            return load(path)
        except Exception as error:
            e = damage(error)
            if e is None or isinstance(error, CheckpointMismatchError):
                raise
            others = [s for s in steps_in(path.parent) if str(s) != path.name]
            file, reason = damaged_file(path, e), one_line(e)
            what = reason if reason.startswith(file) else f"{file}: {reason}"
            raise CheckpointError(
                f"{path} is damaged ({what[:300]}); other steps in "
                f"{path.parent}: {', '.join(map(str, others)) or 'none'}"
            ) from e
    found = newest_intact(path / "checkpoints", lambda step: load(path / "checkpoints" / str(step)))
    if found is None:
        what = (
            "a config.json but no checkpoint; train first"
            if (path / "config.json").exists()
            else "no checkpoint with a saved config and no config.json"
        )
        raise FileNotFoundError(f"{path}: holds {what}")
    return found[1]


def _load_step(
    step_dir: epath.Path,
    mesh: dict[str, int],
    dtype: str,
    quantize: str,
    devices: list,
    lora_base: str | None,
) -> tuple[System, Params]:
    config = read_config_file(step_dir / "config" / "metadata")
    config.mesh = mesh
    system = build_system(config)
    sampled = quantized_system(system, quantize)
    on = make_mesh(config.mesh, devices)
    rules = axis_rules(config)
    batch = system.example_batch(1)
    with jax.set_mesh(on), nn.logical_axis_rules(rules):
        boxed = {  # shapes only: nothing is computed
            s: jax.eval_shape(lambda b, s=s: s.init(jax.random.key(0), b), batch)
            for s in {system, sampled}
        }
        shardings = {s: nn.meta.unbox(logical_shardings(b, on, rules)) for s, b in boxed.items()}
    cast = lambda s: jnp.dtype(dtype) if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype
    abstract = jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, cast(s), sharding=sharding),
        nn.meta.unbox(boxed[system]),
        shardings[system],
    )
    targets, layout = _flat(abstract), _flat(shardings[sampled])
    quantized = {  # path -> (abstract int8 leaf, its shardings), for the kernels qwix stores int8
        path: (leaf, layout[path])
        for path, leaf in _flat(boxed[sampled]).items()
        if is_quantized(leaf)
    }
    for path in quantized:  # read in float32 and rounded once, to int8
        targets[path] = targets[path].update(dtype=jnp.float32)
    if config.lora.rank:  # base + adapters, merged in float32, then cast (or rounded to int8)
        key = "the LoRA run merged"
        merged = _flat(restore_merged(step_dir, config, system, on, rules, base_from=lora_base))
        chunks = [{path: merged[path].astype(t.dtype) for path, t in targets.items()}]
    else:
        state_dir = step_dir / "state"
        saved = ocp.PyTreeCheckpointHandler().metadata(state_dir).tree  # no array is read
        key = "ema_params" if saved.get("ema_params") else "params"
        check_params(saved[key], abstract, str(step_dir))  # the model may have changed since
        chunks = _restore_chunks(state_dir, key, targets)
    params = {}
    for chunk in chunks:
        floats = {path: chunk.pop(path) for path in list(chunk) if path in quantized}
        if floats:  # one program per chunk; the float32 copies are donated
            chunk.update(
                jax.jit(
                    lambda xs: {p: quantize_leaf(x, quantized[p][0]) for p, x in xs.items()},
                    out_shardings={p: quantized[p][1] for p in floats},
                    donate_argnums=0,
                )(floats)
            )
        params.update(chunk)
    logging.info(
        "loaded %s from %s in %s%s on mesh %s",
        key,
        step_dir,
        dtype,
        f" ({quantize} kernels)" if quantized else "",
        dict(on.shape),
    )
    return sampled, flax.traverse_util.unflatten_dict(params)


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
    """path -> leaf of a tree of dicts (a boxed or `WithAux` leaf is one leaf)."""
    return flax.traverse_util.flatten_dict(tree)


def _restore_chunks(state_dir: epath.Path, key: str, targets: dict, budget: int = 2 * GiB):
    """The arrays of `targets` (path -> sharded ShapeDtypeStruct) read from the checkpoint's
    tree `key` in chunks, each closed once it holds `budget` bytes per device, each array read
    into its shards: a caller that shrinks every chunk (int8) never holds the float tree."""
    chunk, size = {}, 0
    for path, target in targets.items():
        chunk[path] = target
        size += math.prod(target.sharding.shard_shape(target.shape)) * target.dtype.itemsize
        if size >= budget:
            yield _restore(state_dir, key, chunk)
            chunk, size = {}, 0
    if chunk:
        yield _restore(state_dir, key, chunk)


def _restore(state_dir: epath.Path, key: str, chunk: dict) -> dict:
    item = {key: flax.traverse_util.unflatten_dict(chunk)}
    with ocp.PyTreeCheckpointer() as checkpointer:  # each array read into its shards, cast
        restored = checkpointer.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            ),
        )
    return _flat(restored[key])


# ---- audio


def _decode_audio_only(path: str) -> tuple[np.ndarray, int]:
    """All samples of a file's first audio stream: (float32 [S, C], sample rate)."""
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            to_float = av.AudioResampler(format="fltp")  # keeps the rate and the layout
            chunks = [
                out.to_ndarray()
                for frame in container.decode(stream)
                for out in to_float.resample(frame)
            ]  # each [C, n]
            chunks += [out.to_ndarray() for out in to_float.resample(None)]
            rate = int(stream.rate)
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode: {e}") from e
    if not chunks:
        raise MediaError(f"{path}: the audio stream holds no samples")
    return np.concatenate(chunks, axis=1).T.astype(np.float32), rate


def _has_video(path: str) -> bool:
    try:
        with av.open(path) as container:
            return bool(container.streams.video)
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode: {e}") from e


def read_audio(
    path: str | os.PathLike, sample_rate: int, num_samples: int | None = None
) -> np.ndarray:
    """Mono float32 [S] at `sample_rate` from an audio file or a video's soundtrack (aligned to
    its first frame); cropped or zero-padded to `num_samples` unless that is None."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    if _has_video(path):
        # no video frame is decoded; a little more than needed, so a longer track is noticed
        seconds = None if num_samples is None else num_samples / sample_rate + 0.1
        audio, rate = read_soundtrack(path, seconds)
    else:
        audio, rate = _decode_audio_only(path)
    if audio.shape[1] > 1:
        logging.warning("%s: %d channels downmixed to mono", path, audio.shape[1])
    wave = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]  # [S]
    if rate != sample_rate:
        logging.warning("%s: resampled from %d Hz to %d Hz", path, rate, sample_rate)
        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate)
    if num_samples is not None and len(wave) != num_samples:
        logging.warning(
            "%s: %.3f s %s to the model's %.3f s",
            path,
            len(wave) / sample_rate,
            "cropped" if len(wave) > num_samples else "zero-padded",
            num_samples / sample_rate,
        )
        wave = np.pad(wave[:num_samples], (0, max(0, num_samples - len(wave))))
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


# ---- video and images


def _note_fit(path: str, source: tuple[int, int], height: int, width: int) -> None:
    """The notice for frames of `source` (H, W) centre-cropped and resized to height x width."""
    h, w = source
    if (h, w) == (height, width):
        return
    crop_h, crop_w = min(h, round(w * height / width)), min(w, round(h * width / height))
    crop = f", centre-cropped to {crop_h}x{crop_w}," if (crop_h, crop_w) != (h, w) else ""
    logging.warning("%s: frames of %dx%d%s resized to %dx%d (HxW)", path, h, w, crop, height, width)


def read_video(
    path: str | os.PathLike, fps: float, num_frames: int, height: int, width: int
) -> np.ndarray:
    """Frames float32 [num_frames, height, width, 3] in [-1, 1] from a video file: the frame
    shown at the middle of each output frame's interval (by presentation time), upright, centre
    cropped and resized, padded with the last frame when the clip is shorter. Only those
    frames are decoded and converted."""
    path = os.fspath(path)
    window = read_window(path, fps=fps, num_frames=num_frames, size=(height, width), audio=False)
    frames = window.video  # [F, height, width, 3] uint8
    if abs(window.source_fps - fps) > 1e-3:
        logging.warning("%s: %g fps resampled to %g fps", path, window.source_fps, fps)
    _note_fit(path, window.source_size, height, width)
    if len(frames) < num_frames:
        logging.warning(
            "%s: %.3f s of video padded with the last frame to the model's %d frames",
            path,
            window.end,
            num_frames,
        )
        frames = frames[np.minimum(np.arange(num_frames), len(frames) - 1)]
    elif window.end > num_frames / fps + 1e-3:
        logging.warning(
            "%s: only the first %d frames (%.3f s) are used", path, num_frames, num_frames / fps
        )
    return unit_range(frames)


def read_image(path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """A reference first frame float32 [height, width, 3] in [-1, 1] from an image file (or the
    first frame of a video), upright, centre-cropped and resized."""
    path = os.fspath(path)
    window = read_window(path, fps=1000.0, num_frames=1, size=(height, width), audio=False)
    _note_fit(path, window.source_size, height, width)
    return unit_range(window.video[0])
