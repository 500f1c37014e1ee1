"""The paper's ablation ladder (Table 3) rerun on the sounding-shapes world, where sync is exact.

Each rung adds one thing to the one before - GLDI, RoPE time alignment, Cross-Task Synergy,
SyncCFG - under identical budgets and seeds; extra rows vary what the paper did not ablate (the
local window, the CTS weights, the SyncCFG scales). A rung that only changes the sampler reuses
its predecessor's training. Every training resumes and every evaluation is cached in the workdir,
so an interrupted ladder continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from harmony_jax.atomic import atomic_path
from harmony_jax.eval.heldout import EVAL_SEED_OFFSET, evaluate_sync
from harmony_jax.generation import MODES
from harmony_jax.inference import load_for_inference
from harmony_jax.training.loop import train

Overrides = tuple[tuple[str, Any], ...]  # (dotted config key, value), applied in order
EVAL_WORLD_SEED = EVAL_SEED_OFFSET  # seed 0's held-out set, for every rung and seed


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row: config overrides for training and for sampling (keys of `config.sample`)."""

    name: str
    train: Overrides
    sample: Overrides
    extra: bool = False  # a row the paper did not ablate


_BASELINE: Overrides = (
    ("model.interaction.mode", "global"),
    ("model.interaction.rope_align", False),
    ("cts.mode", "joint_only"),
)
_GLDI = (("model.interaction.mode", "gldi"),)
_ROPE = (("model.interaction.rope_align", True),)
_CTS = (("cts.mode", "split"),)
_CFG = (("guidance", "cfg"),)
_SYNCFG = (("guidance", "syncfg"),)
FULL_RECIPE = _BASELINE + _GLDI + _ROPE + _CTS  # the last rung's training

LADDER = (
    Variant("Global cross-attn (Ovi-like)", _BASELINE, _CFG),
    Variant("+ GLDI", _BASELINE + _GLDI, _CFG),
    Variant("+ RoPE alignment", _BASELINE + _GLDI + _ROPE, _CFG),
    Variant("+ Cross-Task Synergy", FULL_RECIPE, _CFG),
    Variant("+ SyncCFG", FULL_RECIPE, _SYNCFG),
)
CURVE_RUNGS = ("+ RoPE alignment", "+ Cross-Task Synergy")  # joint-only vs CTS (paper Fig. 3)


def extra_variants(
    windows: Sequence[float] = (1.0, 4.0),
    cts_weights: Sequence[tuple[float, float]] = ((0.3, 0.1), (0.1, 0.3)),
    syncfg_scales: Sequence[tuple[float, float]] = ((1.5, 1.0), (5.0, 4.0)),
) -> tuple[Variant, ...]:
    """Full-recipe rows varying one knob each: the local window (+/- video latent frames), the
    CTS weights (lambda_v, lambda_a: the demo trains with (1, 1), the code's default is (0.1, 0.3))
    and the SyncCFG scales (s_v, s_a)."""
    rows = [
        Variant(
            f"window +/-{w:g} frames",
            FULL_RECIPE + (("model.interaction.window", w),),
            _SYNCFG,
            extra=True,
        )
        for w in windows
    ]
    rows += [
        Variant(
            f"CTS lambda_v={lv:g}, lambda_a={la:g}",
            FULL_RECIPE + (("cts.lambda_v", lv), ("cts.lambda_a", la)),
            _SYNCFG,
            extra=True,
        )
        for lv, la in cts_weights
    ]
    rows += [
        Variant(
            f"SyncCFG s_v={sv:g}, s_a={sa:g}",
            FULL_RECIPE,
            _SYNCFG + (("s_v", sv), ("s_a", sa)),
            extra=True,
        )
        for sv, sa in syncfg_scales
    ]
    return tuple(rows)


def with_overrides(
    config: ml_collections.ConfigDict, overrides: Overrides
) -> ml_collections.ConfigDict:
    """A copy of `config` with each dotted key set; a key the config lacks is an error."""
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides:
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"ablation override {key!r}: the config has no such key")
        node[leaf] = value
    return config


def _key(settings: dict) -> str:
    """A short stable name for a set of settings (order-insensitive)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _summary(rows: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Clip means of one evaluation: F1 / |offset| / |AV offset| per mode, beside chance."""
    out = {}
    for mode in MODES:
        gen, shuf = rows.get(f"{mode} generated"), rows.get(f"{mode} shuffled")
        if gen is None:
            continue
        with np.errstate(all="ignore"):
            out[f"{mode}_f1"] = float(np.nanmean([c["event_f1"] for c in gen]))
            out[f"{mode}_f1_shuffled"] = float(np.nanmean([c["event_f1"] for c in shuf]))
            offsets = [c["mean_abs_offset_ms"] for c in gen]
            out[f"{mode}_offset_ms"] = (
                float(np.nanmean(offsets)) if np.isfinite(offsets).any() else float("nan")
            )
            out[f"{mode}_av_offset_ms"] = float(np.mean([abs(c["av_offset_ms"]) for c in gen]))
    return out


def _cached(path: str, compute) -> Any:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    value = compute()
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    return value


# Budgets per run, the same for every rung, on top of the base config. Full: the demo model on
# one GPU. Quick: a narrower, shallower model for a 2-core CPU, minutes per run.
PRESETS = {
    "full": dict(steps=8000, batch=32, clips=32, curve_every=1000, overrides=()),
    "quick": dict(
        steps=300,
        batch=8,
        clips=8,
        curve_every=100,
        overrides=(
            ("model.depth", 2),
            ("model.video.dim", 96),
            ("model.video.ffn_dim", 192),
            ("model.audio.dim", 96),
            ("model.audio.ffn_dim", 192),
            ("optim.ema_decay", 0.98),
            ("sample.steps", 16),
        ),
    ),
}


@dataclasses.dataclass
class Ladder:
    """Trains and evaluates variants of `base` under `workdir`, one run per (training, seed)."""

    base: ml_collections.ConfigDict
    workdir: str
    num_clips: int = 8
    curve_every: int = 0  # > 0: keep a checkpoint this often and trace sync vs step

    @classmethod
    def from_preset(
        cls, config: ml_collections.ConfigDict, preset: str, workdir: str, steps: int = 0
    ) -> Ladder:
        """The ladder of `PRESETS[preset]` on top of `config` (`steps` > 0 overrides its budget)."""
        p = PRESETS[preset]
        steps = steps or p["steps"]
        base = with_overrides(
            config,
            (
                ("total_steps", steps),
                ("batch_size", p["batch"]),
                ("optim.warmup_steps", min(config.optim.warmup_steps, steps // 10)),
                ("sample_every", 0),
            )
            + p["overrides"],
        )
        return cls(base, workdir, num_clips=p["clips"], curve_every=min(p["curve_every"], steps))

    def run_dir(self, variant: Variant, seed: int) -> str:
        # Named by everything that shapes training, so a changed budget or base never reuses
        # a run; the sampling settings name the evaluations instead.
        settings = {k: v for k, v in self.config(variant, 0).to_dict().items() if k != "sample"}
        return os.path.join(self.workdir, f"train-{_key(settings)}", f"seed{seed}")

    def config(self, variant: Variant, seed: int) -> ml_collections.ConfigDict:
        config = with_overrides(self.base, variant.train)
        config.seed = seed
        if self.curve_every:  # checkpoints never change the run: data and RNG follow the step
            config.checkpoint_every = self.curve_every
            config.keep_checkpoints = config.total_steps // self.curve_every + 1
        return config

    def train(self, variant: Variant, seed: int) -> str:
        run_dir = self.run_dir(variant, seed)
        os.makedirs(run_dir, exist_ok=True)
        _cached(os.path.join(run_dir, "overrides.json"), lambda: dict(variant.train))
        config = self.config(variant, seed)
        final = os.path.join(run_dir, "checkpoints", str(config.total_steps))
        if not os.path.exists(final):
            logging.info("training %s (seed %d) in %s", variant.name, seed, run_dir)
            train(config, run_dir)
        if not os.path.exists(final):  # preempted: the checkpoint is saved, rerun to continue
            raise SystemExit(
                f"ablation: {run_dir} stopped before step {config.total_steps}; "
                f"rerun the same command to continue"
            )
        return run_dir

    def evaluate(
        self, variant: Variant, seed: int, step: int | None = None, modes: Sequence[str] = MODES
    ) -> dict[str, float]:
        """Sync summary of the trained variant at `step` (default: the end of training)."""
        run_dir = self.train(variant, seed)
        step = self.base.total_steps if step is None else step
        sampling = {**self.base.sample.to_dict(), **dict(variant.sample), "clips": self.num_clips}
        tag = f"{_key(sampling)}-{step}-{'+'.join(modes)}"

        def compute():
            # float32 as trained: the cached summaries (keyed without a dtype) stay comparable
            system, params = load_for_inference(
                os.path.join(run_dir, "checkpoints", str(step)), dtype="float32"
            )
            rows = evaluate_sync(
                system,
                params,
                self.num_clips,
                with_truth=False,
                modes=modes,
                world_seed=EVAL_WORLD_SEED,
                **dict(variant.sample),
            )
            return _summary(rows)

        return _cached(os.path.join(run_dir, f"eval-{tag}.json"), compute)

    def curve(self, variant: Variant, seed: int) -> list[tuple[int, float]]:
        """(step, t2av event F1) at every kept checkpoint: the drift of sync during training."""
        run_dir = self.train(variant, seed)
        steps = sorted(
            int(p) for p in os.listdir(os.path.join(run_dir, "checkpoints")) if p.isdigit()
        )
        # The last step's full evaluation is already there; earlier steps need only T2AV.
        return [
            (
                s,
                self.evaluate(variant, seed, s, modes=("t2av",) if s < steps[-1] else MODES)[
                    "t2av_f1"
                ],
            )
            for s in steps
        ]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (nan-aware; std 0 for one seed)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


COLUMNS = (
    ("t2av_f1", "T2AV F1 ^"),
    ("t2av_f1_shuffled", "shuffled"),
    ("t2av_offset_ms", "|offset| ms v"),
    ("t2av_av_offset_ms", "|AV off| ms v"),
    ("a2v_f1", "A2V F1 ^"),
    ("v2a_f1", "V2A F1 ^"),
)


def aggregate(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, tuple]]:
    """variant -> column -> (mean, std) over seeds."""
    return {
        name: {col: mean_std([r.get(col, float("nan")) for r in runs]) for col, _ in COLUMNS}
        for name, runs in results.items()
    }


def _direction(prev: tuple[float, float], cur: tuple[float, float]) -> str:
    """Whether a rung moved T2AV F1, and whether the move exceeds the seed spread."""
    delta = cur[0] - prev[0]
    noise = max(prev[1], cur[1])
    word = "up" if delta > 0 else "down" if delta < 0 else "flat"
    return f"{word} {delta:+.3f}" + (" (within spread)" if abs(delta) <= noise else "")


def format_table(stats: dict[str, dict[str, tuple]], variants: Sequence[Variant]) -> str:
    """The paper's Table 3 layout: one row per rung (mean +/- std over seeds), then extras."""
    head = (
        f"{'Method':<34}" + "".join(f"{title:>17}" for _, title in COLUMNS) + "  T2AV F1 vs above"
    )
    lines = [head, "-" * len(head)]
    prev_f1, extras_started = None, False
    for v in variants:
        if v.extra and not extras_started:
            lines.append("not ablated in the paper (full recipe, one knob changed):")
            extras_started = True
        s = stats[v.name]
        cells = "".join(
            f"{s[c][0]:>9.3f} +/-{s[c][1]:<5.3f}"
            if "f1" in c
            else f"{s[c][0]:>9.1f} +/-{s[c][1]:<5.1f}"
            for c, _ in COLUMNS
        )
        trend = "" if v.extra or prev_f1 is None else _direction(prev_f1, s["t2av_f1"])
        lines.append(f"{v.name:<34}{cells}  {trend}")
        if not v.extra:
            prev_f1 = s["t2av_f1"]
    return "\n".join(lines)


def plot(
    stats: dict[str, dict[str, tuple]],
    variants: Sequence[Variant],
    curves: dict[str, list[list[tuple[int, float]]]],
    path: str,
) -> None:
    """The ladder with error bars (left) and sync vs step, joint-only vs CTS (right), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), width_ratios=(1.6, 1))
    names = [v.name for v in variants]
    means = [stats[n]["t2av_f1"][0] for n in names]
    stds = [stats[n]["t2av_f1"][1] for n in names]
    colors = ["tab:gray" if v.extra else "tab:blue" for v in variants]
    ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
    chance = np.nanmean([stats[n]["t2av_f1_shuffled"][0] for n in names])
    ax.axhline(chance, color="tab:red", ls="--", lw=1, label="audio shuffled across clips")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("T2AV event F1 (mean +/- std over seeds)")
    ax.legend(fontsize=8)
    for name, runs in curves.items():
        steps = [s for s, _ in runs[0]]
        values = np.array([[f for _, f in run] for run in runs])
        mean, std = values.mean(0), values.std(0)
        bx.plot(steps, mean, marker="o", label=name)
        bx.fill_between(steps, mean - std, mean + std, alpha=0.2)
    bx.set_xlabel("training step")
    bx.set_ylabel("T2AV event F1")
    bx.set_title("sync during training: joint-only vs CTS", fontsize=9)
    bx.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run_ladder(
    ladder: Ladder,
    seeds: Sequence[int],
    variants: Sequence[Variant],
    extra_seeds: Sequence[int] | None = None,
) -> tuple[dict[str, dict[str, tuple]], dict[str, list[list[tuple[int, float]]]]]:
    """The rungs for every seed, then the extra rows (for `extra_seeds`, default `seeds`), then
    the joint-only vs CTS curves when `ladder.curve_every` is set; results JSON in the workdir.
    Seed-major within each group, so a ladder cut short holds whole seeds of the paper's rows."""
    results: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    groups = (
        (seeds, [v for v in variants if not v.extra]),
        (seeds if extra_seeds is None else extra_seeds, [v for v in variants if v.extra]),
    )
    for group_seeds, group in groups:
        for seed in group_seeds:
            for v in group:
                results[v.name].append(ladder.evaluate(v, seed))
    by_name = {v.name: v for v in variants}
    curves = {}
    if ladder.curve_every:
        curves = {
            name: [ladder.curve(by_name[name], seed) for seed in seeds]
            for name in CURVE_RUNGS
            if name in by_name
        }
    stats = aggregate(results)
    with (
        atomic_path(os.path.join(ladder.workdir, "results.json"), overwrite=True) as tmp,
        open(tmp, "w") as f,
    ):
        json.dump({"per_seed": results, "stats": stats, "curves": curves}, f, indent=1)
    return stats, curves
