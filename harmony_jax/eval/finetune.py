"""Teaching a trained sounding-shapes model a colour it never saw: LoRA beside full fine-tuning.

The core of bench/demo_lora.py: the two fine-tunes' configs (the base's world with the colour
added, the base's weights), their trained parameters and train steps/s timed in turn, and each
model's new-colour shares and old-world event F1 sampled from one noise, in one table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from harmony_jax.atomic import atomic_path
from harmony_jax.data.sounding_shapes import SoundingShapes
from harmony_jax.errors import ConfigError
from harmony_jax.eval.contact_sheet import write_contact_sheet
from harmony_jax.eval.heldout import EVAL_SEED_OFFSET, evaluate_sync
from harmony_jax.eval.new_colour import colour_shares
from harmony_jax.eval.sync import nan_mean, paired_bootstrap_ci
from harmony_jax.generation import MODES
from harmony_jax.inference import load_for_inference
from harmony_jax.model.lora import count
from harmony_jax.parallel.mesh import make_mesh
from harmony_jax.parallel.sharding import axis_rules
from harmony_jax.perf.measure import format_table, interleaved_medians
from harmony_jax.perf.train_step import compiled_step
from harmony_jax.system import build_system
from harmony_jax.training import lora
from harmony_jax.training.checkpoint import read_config
from harmony_jax.training.loop import train


def fine_tune_configs(
    base: ml_collections.ConfigDict, base_dir: str, color: str, steps: int, rank: int
) -> dict[str, ml_collections.ConfigDict]:
    """{'LoRA': ..., 'full': ...}: the base's config on its world plus `color`, from its
    weights, `steps` long, one checkpoint at the end."""
    if color in base.data.colors:
        raise ConfigError(f"colour {color!r}: the base {base_dir} already trained on it")
    common = ml_collections.ConfigDict(base.to_dict())
    common.data.colors = (*base.data.colors, color)
    common.update(total_steps=steps, checkpoint_every=steps, keep_checkpoints=1)
    common.optim.warmup_steps = min(base.optim.warmup_steps, steps // 4)
    common.init.update(video_from="", transcript_from="", base_from="", params_from="")
    common.lora.rank = 0
    adapters = ml_collections.ConfigDict(common.to_dict())
    adapters.lora.update(rank=rank, train_also="^text/")
    adapters.init.base_from = os.path.abspath(base_dir)
    full = ml_collections.ConfigDict(common.to_dict())
    full.init.params_from = os.path.abspath(base_dir)
    return {"LoRA": adapters, "full": full}


def trained_and_timed(configs: dict[str, ml_collections.ConfigDict], timing_steps: int):
    """Per fine-tune, (trained parameter count, train steps/s): each step compiled as the loop
    compiles it, the steps of the two timed in turn."""
    steps, counts = {}, {}
    for name, config in configs.items():
        system = lora.with_lora(build_system(config), config)
        mesh, rules = make_mesh(config.mesh), axis_rules(config)
        plain = lora.plain_abstract(system, mesh, rules)
        if system.lora is None:
            counts[name] = count(plain)
            steps[name] = compiled_step(system, config)[0]
        else:
            counts[name] = count(lora.trained_abstract(plain, system.lora))
            base = lora.load_base(system, config, mesh, rules, plain)[0]
            steps[name] = compiled_step(system, config, base=lambda _, b=base: b)[0]
    seconds = interleaved_medians(steps, timing_steps, warmup=2)
    return {name: (counts[name], 1.0 / seconds[name]) for name in configs}


def measure(
    path: str,
    color: str,
    old: SoundingShapes,
    *,
    colour_clips: int,
    sample_steps: int,
    modes: Sequence[str],
    keep: dict | None = None,
) -> dict:
    """One model's new-colour shares and per-clip event F1 per mode on the old world `old`
    (every model samples from the noise of the base's seed: the F1 changes are paired);
    `keep` receives its new-colour samples (`colour_shares`)."""
    system, params = load_for_inference(path, dtype="float32")
    overrides = {"steps": sample_steps} if sample_steps else {}
    shares = colour_shares(system, params, color, colour_clips, old.seed + 1, keep)
    rows = evaluate_sync(
        system,
        params,
        len(old),
        with_truth=False,
        modes=modes,
        world_seed=old.seed,
        colors=old.colors,
        **overrides,
    )
    f1 = {mode: [c["event_f1"] for c in rows[f"{mode} generated"]] for mode in modes}
    return {"shares": shares, "f1": f1}


def tables(results: dict, timing: dict, rank: int, color: str) -> str:
    """Base, LoRA and full side by side; then each fine-tune's F1 change on the old world."""
    truth, modes = results["base"]["shares"], list(results["base"]["f1"])
    head = ["model", "trained params", "train steps/s"]
    head += [f"{color} pixel share", f"{color} pitch share", *(f"{m} F1" for m in modes)]
    rows = [["ground truth", "", "", truth["truth colour"], truth["truth pitch"]]]
    rows[0] += [""] * len(modes)
    label = {"base": "base (before)", "LoRA": f"LoRA rank {rank}", "full": "full fine-tune"}
    for name, result in results.items():
        params, speed = (f"{timing[name][0]:,}", timing[name][1]) if name in timing else ("", "")
        shares = result["shares"]
        f1 = [nan_mean(result["f1"][m]) for m in modes]
        rows.append([label[name], params, speed, shares["colour"], shares["pitch"], *f1])
    change = [["fine-tune", *(f"{m} F1 after - before (95% CI)" for m in modes)]]
    for name in ("LoRA", "full"):
        cells = [name]
        for mode in modes:
            after = np.nan_to_num(results[name]["f1"][mode])
            before = np.nan_to_num(results["base"]["f1"][mode])
            low, high = paired_bootstrap_ci(after, before)
            cells.append(f"{np.mean(after - before):+.3f} [{low:+.3f}, {high:+.3f}]")
        change.append(cells)
    return format_table(head, rows) + "\n\n" + format_table(change[0], change[1:])


def compare(
    base_dir: str,
    workdir: str,
    color: str,
    *,
    steps: int,
    rank: int,
    num_clips: int,
    colour_clips: int,
    timing_steps: int,
    sample_steps: int = 0,
    modes: Sequence[str] = MODES,
    echo: Callable[[str], None] = print,
) -> dict:
    """Trains (or reuses) both fine-tunes of `base_dir` under `workdir`, measures base, LoRA and
    full, echoes the tables and writes them with the numbers to `workdir/demo_lora.json`."""
    base_config, _ = read_config(base_dir)
    configs = fine_tune_configs(base_config, base_dir, color, steps, rank)
    for name, config in configs.items():
        train(config, os.path.join(workdir, name))
    timing = trained_and_timed(configs, timing_steps)
    # the base's held-out world: clips of its own colours its training never drew
    old = SoundingShapes.like(base_config.data, num_clips, base_config.seed + EVAL_SEED_OFFSET)
    paths = {"base": base_dir, **{n: os.path.join(workdir, n) for n in configs}}
    results, samples = {}, {}
    for name, path in paths.items():
        keep = {}
        results[name] = measure(
            path,
            color,
            old,
            colour_clips=colour_clips,
            sample_steps=sample_steps,
            modes=modes,
            keep=keep,
        )
        samples[name], truth = keep["t2av"], keep["ground truth"]
    sheet = os.path.join(workdir, "demo_lora_sheet.png")
    d = base_config.data
    write_contact_sheet(
        sheet, samples | {"ground truth": truth}, d.fps, d.sample_rate, 4, palette=(color,)
    )
    text = tables(results, timing, rank, color)
    echo(
        f"\n{color} taught to {base_dir}: {steps} steps of batch {base_config.batch_size} each; "
        f"old world: {num_clips} held-out clips per mode\n{text}\n"
        f"T2AV samples naming {color} (per model) above the ground truth: {sheet}"
    )
    out = {"timing": timing, "results": results, "tables": text}
    with atomic_path(os.path.join(workdir, "demo_lora.json"), overwrite=True) as tmp:
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
    return out
