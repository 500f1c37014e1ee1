"""Event F1 against training steps: each checkpoint a run kept, on held-out prompts, every mode.

The curve a recipe search reads (bench/demo_curve.py): whether sync grows with steps, and how
many the budget would need.
"""

from __future__ import annotations

import os

from harmony_jax.eval.heldout import evaluate_sync
from harmony_jax.eval.sync import nan_mean
from harmony_jax.generation import MODES
from harmony_jax.inference import load_for_inference


def checkpoint_steps(workdir: str) -> list[int]:
    root = os.path.join(workdir, "checkpoints")
    return sorted(int(name) for name in os.listdir(root) if name.isdigit())


def curve(workdir: str, num_clips: int, echo=None) -> list[dict[str, float]]:
    """One row per checkpoint: F1 and its shuffled baseline per mode, the share of frames with
    the captioned balls; `echo` receives each row's text as it is measured."""
    rows = []
    for step in checkpoint_steps(workdir):
        system, params = load_for_inference(
            os.path.join(workdir, "checkpoints", str(step)), dtype="float32"
        )
        clips = evaluate_sync(system, params, num_clips, with_truth=False)
        row = {"step": step}
        for mode in MODES:
            gen, shuf = clips[f"{mode} generated"], clips[f"{mode} shuffled"]
            row[mode] = nan_mean([c["event_f1"] for c in gen])
            row[f"{mode} shuffled"] = nan_mean([c["event_f1"] for c in shuf])
            row[f"{mode} balls"] = nan_mean([c["balls_right"] for c in gen])
        rows.append(row)
        if echo is not None:
            echo(format_row(row))
    return rows


def header() -> str:
    cols = "".join(f" {m + ' F1/shuf':>16} {m + ' balls':>11}" for m in MODES)
    return f"{'step':>6}{cols}"


def format_row(row: dict[str, float]) -> str:
    cols = ""
    for m in MODES:
        pair = f"{row[m]:.3f}/{row[m + ' shuffled']:.3f}"
        cols += f" {pair:>16} {row[m + ' balls']:>11.2f}"
    return f"{row['step']:>6}{cols}"
