"""Audio-video synchronization of sounding clips, generated or real.

    python -m harmony_jax.evaluate PATH [--json out.json] [--sounding_shapes] [--plot out.png]
                                        [--max_lag 1.0]
    python -m harmony_jax.evaluate --workdir DIR [--num_clips 8] [--out_dir DIR] [--json out.json]
                                   [--mesh fsdp=4,tensor=2] [--dtype bfloat16] [--quantize int8]

PATH is one clip or a folder of clips (.mp4, .mov, .m4v, .mkv, .webm). Every clip gets the
generic AV offset estimate of DESIGN.md section 9 (the lag, within +/- max-lag, shorter than the
clip, that best aligns the video's motion-change envelope with the audio's onset-strength
envelope; positive = audio late) with the evidence
behind it: the correlation's peak-to-sidelobe ratio and the motion and onset events counted. A
clip without any (static video, silence, a steady tone) reads "no sync evidence" and is left out
of the mean. `--sounding_shapes` adds the event metrics that need clips of that world: bounces
seen vs onsets heard, event F1 and mean |offset| of the matched pairs. A table (one row per clip,
then the mean) goes to stdout; `--json` writes the same numbers as one object, `--plot` a PNG of
both envelopes per clip.

`--workdir DIR` (or `--checkpoint DIR/checkpoints/<step>`) evaluates a model instead: a run
trained on the sounding-shapes world samples held-out prompts of that world in every mode, loaded
as `sample` loads it (`--mesh`, `--dtype`, `--quantize` as there), and prints the demo's sync
table: event F1, mean |offset| and AV offset per mode, beside the same clips with the audio
shuffled across clips (chance) and the ground truth. `--out_dir` keeps the clips.

Frames are picked by presentation time at the clip's fastest sustained rate (variable-rate clips
measure right) and decoded straight to the analysis size, so memory depends on the clip's
duration at that small size, not on its resolution.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

import numpy as np
from absl import app
from absl.flags import argparse_flags

from harmony_jax import quiet_logs
from harmony_jax.atomic import atomic_path
from harmony_jax.errors import FlagError, reported_as_one_line
from harmony_jax.eval import sync
from harmony_jax.eval.heldout import evaluate_sync
from harmony_jax.inference import add_model_flags, load_for_inference
from harmony_jax.media import MediaError, unit_range
from harmony_jax.media_window import frame_rate, read_window

Metrics = dict[str, float]
_EVENT_COLUMNS = (  # (metric, title, format) of the --sounding_shapes columns
    ("event_f1", "event F1", "{:.3f}"),
    ("mean_abs_offset_ms", "|offset| ms", "{:.1f}"),
    ("num_bounces", "bounces", "{:.1f}"),
    ("num_onsets", "onsets", "{:.1f}"),
)
_EVIDENCE_COLUMNS = (  # the evidence behind every clip's offset
    ("peak_to_sidelobe", "PSR", "{:.1f}"),
    ("motion_events", "motion ev", "{:.0f}"),
    ("onset_events", "onset ev", "{:.0f}"),
)
_NO_EVIDENCE = "no sync evidence"
_MAX_FPS = 60.0  # analysis rate cap: the envelopes are compared on a 100 Hz grid
_SYNC_SIDE = 64  # short side the offset needs (`sync.motion_change` works at <= 64)
_EVENT_SIDE = 256  # short side for --sounding_shapes (ball centroids in pixels)


CLIP_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm")


def clip_paths(path: str) -> list[str]:
    """The clip itself, or the folder's clips (CLIP_EXTENSIONS) in name order."""
    if os.path.isdir(path):
        paths = sorted(
            os.path.join(path, n)
            for n in os.listdir(path)
            if n.lower().endswith(CLIP_EXTENSIONS) and not n.startswith(".")
        )
        if not paths:
            raise FileNotFoundError(f"{path}: no clips ({', '.join(CLIP_EXTENSIONS)})")
        return paths
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [path]


def read_clip(path: str, max_side: int = _SYNC_SIDE) -> tuple[np.ndarray, float, np.ndarray, int]:
    """(frames float32 [F, H, W, 3] in [-1, 1], fps, mono audio float32 [S], sample rate): the
    frame shown at each instant of the clip's fastest sustained rate (at most `_MAX_FPS`),
    upright, scaled down to a short side of `max_side`, and the audio on the same clock."""
    fps = min(frame_rate(path), _MAX_FPS)
    window = read_window(path, fps=fps, max_side=max_side)
    if window.audio is None:
        raise MediaError(f"{path}: no audio stream, nothing to synchronize")
    return (
        unit_range(window.video),
        fps,
        window.audio.mean(axis=1),
        window.sample_rate,
    )


def evaluate_clip(
    video: np.ndarray,
    fps: float,
    audio: np.ndarray,
    sample_rate: int,
    *,
    sounding_shapes: bool = False,
    max_lag: float = 1.0,
) -> Metrics:
    """`sync.offset_evidence` (av_offset_ms nan without sync evidence), plus
    `sync.clip_sync_metrics`' event metrics when `sounding_shapes`."""
    metrics = sync.clip_sync_metrics(video, fps, audio, sample_rate) if sounding_shapes else {}
    metrics.update(sync.offset_evidence(video, fps, audio, sample_rate, max_lag))
    return metrics


def evaluate(
    path: str, *, sounding_shapes: bool = False, max_lag: float = 1.0, plot: str | None = None
) -> dict[str, Any]:
    """{'clips': {name: metrics}, 'mean': metrics (nan-aware), 'max_lag_s': max_lag,
    'no_evidence': the clips without sync evidence, left out of the mean offset} for a clip or a
    folder of clips; `plot` saves the envelopes of every clip as one PNG."""
    if not (math.isfinite(max_lag) and max_lag > 0):
        raise FlagError(f"--max_lag {max_lag}: expected a finite number of seconds > 0")
    clips, curves = {}, []
    for clip in clip_paths(path):
        name = os.path.basename(clip)
        video, fps, audio, rate = read_clip(clip, _EVENT_SIDE if sounding_shapes else _SYNC_SIDE)
        if max_lag >= len(audio) / rate:  # no lag that long fits in the clip
            raise FlagError(
                f"--max_lag {max_lag}: not shorter than {clip} ({len(audio) / rate:.2f} s)"
            )
        try:
            clips[name] = evaluate_clip(
                video, fps, audio, rate, sounding_shapes=sounding_shapes, max_lag=max_lag
            )
        except ValueError as e:  # too few frames, ...: name the file
            raise MediaError(f"{clip}: {e}") from e
        if plot is not None:
            curves.append((name, clips[name]["av_offset_ms"], *_envelopes(video, fps, audio, rate)))
    mean = {k: sync.nan_mean([m[k] for m in clips.values()]) for k in next(iter(clips.values()))}
    if plot is not None:
        _plot(curves, plot)
    none = [name for name, m in clips.items() if not np.isfinite(m["av_offset_ms"])]
    return {"clips": clips, "mean": mean, "max_lag_s": max_lag, "no_evidence": none}


def format_table(results: dict[str, Any]) -> str:
    """One row per clip, then the mean row (its offset over the clips with sync evidence)."""
    clips = results["clips"]
    columns = _EVIDENCE_COLUMNS + (
        _EVENT_COLUMNS if "event_f1" in next(iter(clips.values())) else ()
    )
    none = results["no_evidence"]
    mean_name = f"mean ({len(clips)})"
    if none:
        kept = len(clips) - len(none)
        mean_name = f"mean ({kept} of {len(clips)}: {len(none)} without evidence excluded)"
    width = max(8, len(mean_name) if none else 0, *(len(n) for n in clips))
    header = f"{'clip':<{width}} {'AV offset ms':>16}" + "".join(
        f" {title:>12}" for _, title, _ in columns
    )

    def row(name: str, m: Metrics) -> str:
        offset = m["av_offset_ms"]
        cells = [
            f"{name:<{width}}",
            f"{offset:>16.1f}" if np.isfinite(offset) else f"{_NO_EVIDENCE:>16}",
        ]
        cells += [f"{fmt.format(m[key]):>12}" for key, _, fmt in columns]
        return " ".join(cells)

    rule = "-" * len(header)
    return "\n".join(
        [
            header,
            rule,
            *(row(n, m) for n, m in clips.items()),
            rule,
            row(mean_name, results["mean"]),
        ]
    )


def write_json(path: str, results: dict[str, Any]) -> None:
    """`results` as strict JSON (nan -> null)."""
    clean = lambda x: (
        {k: clean(v) for k, v in x.items()}
        if isinstance(x, dict)
        else [clean(v) for v in x]
        if isinstance(x, list)
        else None
        if isinstance(x, float) and not np.isfinite(x)
        else x
    )

    with atomic_path(path, overwrite=True) as tmp, open(tmp, "w") as f:
        json.dump(clean(results), f, indent=2, allow_nan=False)
        f.write("\n")


def _envelopes(
    video: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(motion times, motion change, onset times, onset strength): what `av_offset` aligns."""
    motion = sync.motion_change(video)  # [F - 2], frames 1 .. F - 2
    onset = sync.onset_strength(audio, sample_rate)  # [T], at i * hop
    return (
        np.arange(1, len(motion) + 1) / fps,
        motion,
        np.arange(len(onset)) * sync._ONSET_HOP,
        onset,
    )


def _plot(curves: list[tuple], path: str) -> None:
    """One panel per clip: both envelopes (peak = 1), and the audio envelope moved by -lag."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    fig = Figure(figsize=(8, 2.2 * len(curves)), layout="constrained")
    axes = fig.subplots(len(curves), 1, squeeze=False)[:, 0]
    unit = lambda x: x / x.max() if x.max() > 0 else x
    for ax, (name, lag_ms, t_motion, motion, t_onset, onset) in zip(axes, curves):
        ax.plot(t_motion, unit(motion), "o-", color="tab:blue", label="video motion change")
        ax.plot(t_onset, unit(onset), color="tab:orange", alpha=0.6, label="audio onset strength")
        if np.isfinite(lag_ms):
            ax.plot(
                t_onset - lag_ms / 1000.0,
                unit(onset),
                "--",
                color="tab:red",
                alpha=0.8,
                label=f"audio moved by {-lag_ms:+.0f} ms",
            )
            ax.set_title(f"{name}: AV offset {lag_ms:+.0f} ms (positive = audio late)")
        else:
            ax.set_title(f"{name}: {_NO_EVIDENCE}")
        ax.set_xlim(0.0, max(t_onset[-1], t_motion[-1]))
        ax.set_xlabel("time (s)")
        ax.legend(loc="upper right", fontsize="small")
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def evaluate_run(
    path: str,
    *,
    num_clips: int = 8,
    out_dir: str | None = None,
    mesh: str | None = None,
    dtype: str = "bfloat16",
    quantize: str = "none",
    lora_base: str | None = None,
) -> dict[str, list[Metrics]]:
    """Per-clip sync metrics per row (`eval.heldout.evaluate_sync`) of the run at `path` (a
    workdir or a step directory, loaded by `inference.load_for_inference`) on `num_clips`
    held-out sounding-shapes prompts; clips are written to `out_dir` when given."""
    if num_clips < 1:
        raise FlagError(f"--num_clips {num_clips}: expected at least 1 clip")
    system, params = load_for_inference(
        path, mesh=mesh, dtype=dtype, quantize=quantize, lora_base=lora_base
    )
    source = system.clip.source
    if source != "sounding_shapes":
        raise FlagError(
            f"{path}: trained on config.data.source={source!r}; held-out prompts exist only for "
            f"the sounding-shapes world (sample clips, then evaluate them as PATH)"
        )
    return evaluate_sync(system, params, num_clips, out_dir=out_dir)


def _parser() -> argparse.ArgumentParser:
    p = argparse_flags.ArgumentParser(
        prog="python -m harmony_jax.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", nargs="?", help="a clip, or a folder of clips")
    run = p.add_argument_group("a model instead of clips (sounding-shapes runs)")
    run.add_argument("--workdir", help="run directory: its latest checkpoint is evaluated")
    run.add_argument("--checkpoint", help="a checkpoint step directory, DIR/checkpoints/<step>")
    run.add_argument("--num_clips", type=int, default=8, help="held-out prompts per mode")
    run.add_argument("--out_dir", help="write the generated clips here")
    add_model_flags(run)
    p.add_argument("--json", help="write the results here as one JSON object")
    p.add_argument(
        "--sounding_shapes",
        action="store_true",
        help="also event F1 / offsets (sounding-shapes clips)",
    )
    p.add_argument("--plot", help="save a PNG of the envelopes and the detected lag")
    p.add_argument("--max_lag", type=float, default=1.0, help="largest lag searched (s)")
    return p


@reported_as_one_line  # the input is at fault: one line, no traceback
def main(args: argparse.Namespace) -> None:
    given = [f for f, v in (("PATH", args.path), ("--workdir", args.workdir)) if v is not None]
    given += ["--checkpoint"] if args.checkpoint is not None else []
    if len(given) != 1:
        raise FlagError(
            f"give one of PATH (clips), --workdir or --checkpoint (a model); got "
            f"{' and '.join(given) or 'none'}"
        )
    if args.path is None:
        for flag, value in (("--sounding_shapes", args.sounding_shapes), ("--plot", args.plot)):
            if value:
                raise FlagError(f"{flag} measures clips (PATH); a model's table has every metric")
        rows = evaluate_run(
            args.workdir or args.checkpoint,
            num_clips=args.num_clips,
            out_dir=args.out_dir,
            mesh=args.mesh,
            dtype=args.dtype,
            quantize=args.quantize,
            lora_base=args.lora_base,
        )
        print(f"{sync.sync_table(rows)}\n\n{sync.versus_shuffled(rows)}")
        if args.json:
            write_json(
                args.json,
                {"rows": rows, "mesh": args.mesh, "dtype": args.dtype, "quantize": args.quantize},
            )
        return
    results = evaluate(
        args.path, sounding_shapes=args.sounding_shapes, max_lag=args.max_lag, plot=args.plot
    )
    print(format_table(results))
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    quiet_logs.install()
    app.run(main, flags_parser=lambda argv: _parser().parse_args(argv[1:]))
