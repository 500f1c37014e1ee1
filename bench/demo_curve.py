"""Event F1 against training steps: every checkpoint of a sounding-shapes run, held-out prompts.

    python bench/demo_curve.py --workdir runs/demo [--num_clips 32] [--plot curve.png]

Trains nothing: it evaluates each checkpoint the run kept (`--config.checkpoint_every`,
`--config.keep_checkpoints`) with the run's sampler, in every mode, beside the same clips with
the audio shuffled, and prints one row per step (F1 / shuffled per mode, the share of frames
showing exactly the captioned balls). `--plot` draws the three per mode against the steps.
"""

from __future__ import annotations

import os

from absl import app, flags

from harmony_jax.eval.curve import curve, header
from harmony_jax.generation import MODES

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "A sounding-shapes run.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 32, "Held-out prompts per mode.")
_PLOT = flags.DEFINE_string("plot", "", "Optional PNG of F1 against steps.")


def plot(rows: list[dict[str, float]], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0 * len(MODES), 3.0), layout="constrained")
    steps = [r["step"] for r in rows]
    for ax, mode in zip(fig.subplots(1, len(MODES), squeeze=False)[0], MODES):
        ax.plot(steps, [r[mode] for r in rows], "o-", label="generated")
        ax.plot(steps, [r[f"{mode} shuffled"] for r in rows], "s--", label="audio shuffled")
        ax.plot(steps, [r[f"{mode} balls"] for r in rows], "^:", label="frames: balls right")
        ax.set(title=mode, xlabel="training step", ylabel="event F1 / share", ylim=(0, 1.05))
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    if not os.path.isdir(os.path.join(_WORKDIR.value, "checkpoints")):
        raise SystemExit(f"demo_curve: no checkpoints in {_WORKDIR.value}")
    print(header(), flush=True)
    rows = curve(_WORKDIR.value, _NUM_CLIPS.value, echo=lambda line: print(line, flush=True))
    if _PLOT.value and rows:
        plot(rows, _PLOT.value)
        print(f"plot: {_PLOT.value}")


if __name__ == "__main__":
    app.run(main)
