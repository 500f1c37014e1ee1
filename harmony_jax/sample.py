"""Sample sounding clips from a trained run.

    python -m harmony_jax.sample --workdir DIR --mode t2av --prompt "a red ball bounces fast" \\
        --out out.mp4
    python -m harmony_jax.sample --workdir DIR --mode a2v --audio in.wav --prompt "..." \\
        --out out.mp4
    python -m harmony_jax.sample --workdir DIR --mode v2a --video in.mp4 --prompt "..." \\
        --out out.mp4

t2av generates video and audio from the prompts (and optionally a reference first frame,
`--image`, and voice, `--ref_audio`); a2v generates the video for the given audio and keeps
that audio sample for sample; v2a generates the audio for the given video and keeps its frames.
Every clip is written as an .mp4 (H.264 + AAC) and a 16-bit .wav beside it. With `--num N > 1`
clip 0 goes to OUT and clip i to OUT's stem + `_i` (out.mp4, out_1.mp4, ...; as the training
samples are named); clip i is drawn with `fold_in(key(seed), i)`, so it does not depend on N.
Given media of another length, rate, channel count, fps or size is fitted to the run's clip
geometry with a logged notice. Every mode needs a non-empty `--prompt`. Existing outputs are
kept unless `--overwrite`; every file is written under a temporary name and renamed when
complete, so an interrupted run leaves no partial file under an output's name. `--mesh`,
`--dtype` and `--quantize` say how the weights are laid out while sampling, `--lora_base`
where a LoRA run's base is now if it moved (`inference.add_model_flags`); the prompts are
embedded first, and a frozen text encoder's weights freed before the sampler runs.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import jax
import numpy as np
from absl import app, logging
from absl.flags import argparse_flags
from tqdm import tqdm

from harmony_jax import generation, quiet_logs
from harmony_jax.diffusion.sampler import SOLVERS
from harmony_jax.diffusion.syncfg import GUIDANCES
from harmony_jax.errors import FlagError, UserError, one_line, reported_as_one_line
from harmony_jax.inference import (
    add_model_flags,
    load_for_inference,
    read_audio,
    read_image,
    read_video,
)
from harmony_jax.media import MediaError, write_av, write_wav
from harmony_jax.system import System

REF_AUDIO_MAX_SECONDS = 3.0  # the paper's reference voices are 1-3 s
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv")  # containers that take H.264 + AAC


def _check_out(out: str) -> None:
    """`--out` must name a video file in a directory that exists or can be made, writable."""
    ext = os.path.splitext(out)[1].lower()
    if ext and ext not in VIDEO_EXTENSIONS:
        raise FlagError(
            f"--out {out}: {ext} is not a video file name; use one of "
            f"{', '.join(VIDEO_EXTENSIONS)} (a .wav is written beside it)"
        )
    if os.path.isdir(out):
        raise FlagError(f"--out {out} is a directory; name the .mp4 to write")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):  # atomic_path makes the missing directories
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise FlagError(f"--out {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FlagError(f"--out {out}: directory {parent} is not writable")


def output_paths(out: str, num: int, overwrite: bool) -> list[tuple[str, str]]:
    """(mp4, wav) per clip: OUT for clip 0, OUT's stem + `_i` for clip i. Raises before any
    work is done if `out` cannot be written (FlagError) or if one exists and `overwrite` is
    False (FileExistsError)."""
    _check_out(out)
    stem, ext = os.path.splitext(out)
    stems = [stem if i == 0 else f"{stem}_{i}" for i in range(num)]
    paths = [(s + (ext or ".mp4"), s + ".wav") for s in stems]
    existing = [p for pair in paths for p in pair if os.path.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} exists; pass --overwrite (overwrite=True) to replace it"
        )
    return paths


def _check_inputs(mode: str, audio, video, image, ref_audio) -> None:
    """Each given file must mean something in `mode`; the error names the flag."""
    needs = {"a2v": ("audio", audio), "v2a": ("video", video)}
    if mode in needs and needs[mode][1] is None:
        raise FlagError(f"mode {mode!r} needs --{needs[mode][0]}")
    unused = {"t2av": ("audio", "video"), "a2v": ("video", "ref_audio"), "v2a": ("audio", "image")}[
        mode
    ]
    given = {"audio": audio, "video": video, "image": image, "ref_audio": ref_audio}
    for name in unused:
        if given[name] is not None:
            raise FlagError(f"--{name} has no meaning in mode {mode!r}")


def _reference_voice(system: System, path: str) -> np.ndarray:
    """Waveform [S_ref] of a reference voice: `config.data.ref_audio_seconds` long when the run
    trained with references, else the file's length up to REF_AUDIO_MAX_SECONDS."""
    rate = system.clip.sample_rate
    seconds = float(system.clip.ref_audio_seconds)
    wave = read_audio(path, rate, round(seconds * rate) if seconds > 0 else None)
    if seconds <= 0 and len(wave) > REF_AUDIO_MAX_SECONDS * rate:
        logging.warning("%s: reference voice cropped to %.1f s", path, REF_AUDIO_MAX_SECONDS)
        wave = wave[: round(REF_AUDIO_MAX_SECONDS * rate)]
    if system.audio_codec.num_latent_frames(len(wave)) < 1:
        raise MediaError(f"{path}: {len(wave)} samples are too short for one audio latent frame")
    return wave


def sample_to_files(
    system: System,
    params: Any,
    out: str,
    *,
    mode: str = "t2av",
    prompt: str,
    audio_prompt: str | None = None,
    transcript: str = "",
    image: str | None = None,
    ref_audio: str | None = None,
    audio: str | None = None,
    video: str | None = None,
    steps: int | None = None,
    guidance: str | None = None,
    s_v: float | None = None,
    s_a: float | None = None,
    cfg_scale: float | None = None,
    solver: str | None = None,
    seed: int = 0,
    num: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """Samples `num` clips and writes each as .mp4 + .wav; returns the .mp4 paths.

    `image`, `ref_audio`, `audio` and `video` are file paths (see the module docstring for the
    modes and names); unset sampler options come from the run's `config.sample`.
    """
    if mode not in generation.MODES:
        raise ValueError(f"mode={mode!r} is not one of {generation.MODES}")
    if num < 1:
        raise ValueError(f"num={num} must be at least 1")
    _check_inputs(mode, audio, video, image, ref_audio)
    paths = output_paths(out, num, overwrite)
    batch = generation.prompt_batch(
        system, [prompt], None if audio_prompt is None else [audio_prompt], [transcript]
    )
    d = system.clip
    given = {}
    if audio is not None:
        given["given_audio"] = read_audio(audio, d.sample_rate, system.num_samples)[None]
    if video is not None:
        given["given_video"] = read_video(video, d.fps, d.num_frames, d.height, d.width)[None]
    if image is not None:
        given["ref_image"] = read_image(image, d.height, d.width)[None]
    if ref_audio is not None:
        batch["ref_audio"] = _reference_voice(system, ref_audio)[None]

    prompts = generation.embed_prompts(system, params, batch, guidance)
    generation.release_text_encoder(system)  # umT5's weights are not needed while sampling
    key = jax.random.key(seed)
    for i in tqdm(range(num), desc=f"sampling {mode}", unit="clip", disable=not progress):
        frames, waves = generation.generate(
            system,
            params,
            jax.random.fold_in(key, i),
            prompts,
            mode=mode,
            guidance=guidance,
            steps=steps,
            solver=solver,
            s_v=s_v,
            s_a=s_a,
            cfg_scale=cfg_scale,
            **given,
        )
        mp4, wav = paths[i]
        write_av(mp4, frames[0], d.fps, waves[0], d.sample_rate, overwrite=overwrite)
        write_wav(wav, waves[0], d.sample_rate, overwrite=overwrite)
    return [mp4 for mp4, _ in paths]


def check_flags(args: argparse.Namespace) -> None:
    """Flags argparse's types let through but the sampler cannot use, refused before any model
    is loaded: a step count below 1, a non-finite guidance scale, `--num` < 1, an `--out` that
    cannot be written."""
    if args.steps is not None and args.steps < 1:
        raise FlagError(f"--steps {args.steps}: expected at least 1 sampler step")
    if args.num < 1:
        raise FlagError(f"--num {args.num}: expected at least 1 clip")
    for flag in ("s_v", "s_a", "cfg_scale"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            raise FlagError(f"--{flag} {value}: expected a finite scale")
    output_paths(args.out, args.num, args.overwrite)


def _caption(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; describe the clip to generate")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse_flags.ArgumentParser(
        prog="python -m harmony_jax.sample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = p.add_mutually_exclusive_group(required=True)
    run.add_argument("--workdir", help="run directory: its latest checkpoint is used")
    run.add_argument("--checkpoint", help="a checkpoint step directory, DIR/checkpoints/<step>")
    p.add_argument("--mode", choices=generation.MODES, default="t2av")
    p.add_argument("--prompt", required=True, type=_caption, help="video caption")
    p.add_argument(
        "--audio_prompt", type=_caption, help="sound caption (default: the video caption)"
    )
    p.add_argument("--transcript", default="", help="words to be spoken")
    p.add_argument("--image", help="reference first frame (t2av, a2v)")
    p.add_argument("--ref_audio", help="reference voice recording (t2av, v2a)")
    p.add_argument("--audio", help="driving audio for a2v: an audio or video file")
    p.add_argument("--video", help="driving video for v2a")
    p.add_argument("--steps", type=int, help="sampler steps (default: config.sample.steps)")
    p.add_argument("--guidance", choices=GUIDANCES)
    p.add_argument("--s_v", type=float, help="SyncCFG video scale")
    p.add_argument("--s_a", type=float, help="SyncCFG audio scale")
    p.add_argument("--cfg_scale", type=float, help="text CFG scale (--guidance cfg)")
    p.add_argument("--solver", choices=SOLVERS)
    p.add_argument("--seed", type=int, default=0, help="clip i uses fold_in(key(seed), i)")
    p.add_argument("--num", type=int, default=1, help="number of clips")
    p.add_argument("--out", required=True, help="output .mp4 (a .wav is written beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_model_flags(p)
    return p


@reported_as_one_line
def main(args: argparse.Namespace) -> None:
    check_flags(args)  # before the slow part
    _check_inputs(args.mode, args.audio, args.video, args.image, args.ref_audio)
    system, params = load_for_inference(
        args.workdir or args.checkpoint,
        mesh=args.mesh,
        dtype=args.dtype,
        quantize=args.quantize,
        lora_base=args.lora_base,
    )
    try:
        paths = sample_to_files(
            system,
            params,
            args.out,
            mode=args.mode,
            prompt=args.prompt,
            audio_prompt=args.audio_prompt,
            transcript=args.transcript,
            image=args.image,
            ref_audio=args.ref_audio,
            audio=args.audio,
            video=args.video,
            steps=args.steps,
            guidance=args.guidance,
            s_v=args.s_v,
            s_a=args.s_a,
            cfg_scale=args.cfg_scale,
            solver=args.solver,
            seed=args.seed,
            num=args.num,
            overwrite=args.overwrite,
        )
    except ValueError as e:  # a prompt or a given file the run cannot use
        if isinstance(e, UserError):
            raise
        raise FlagError(one_line(e)) from e
    logging.info("wrote %s", ", ".join(paths))


if __name__ == "__main__":
    quiet_logs.install()
    app.run(main, flags_parser=lambda argv: _parser().parse_args(argv[1:]))
