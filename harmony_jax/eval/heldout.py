"""Synchronization of a trained model on held-out sounding-shapes prompts, in every mode.

Used by the demo and by `bench/sync_guidance.py`: generated clips are scored by the bounces seen
in their frames against the onsets heard in their audio, beside the same clips with the audio
shuffled across clips (chance level) and the ground truth.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from harmony_jax import generation
from harmony_jax.data.sounding_shapes import SoundingShapes
from harmony_jax.eval.shapes import balls_right, fastest_step, max_jump
from harmony_jax.eval.sync import clip_sync_metrics
from harmony_jax.media import write_av
from harmony_jax.system import System

EVAL_SEED_OFFSET = 1_000_003  # the evaluation world: clips the training stream never draws


def _frame_metrics(frames, fps: float, colors, palette) -> list[dict[str, float]]:
    """Per clip, whether its frames show the captioned balls: `balls_right` (share of frames)
    and `smooth` (1.0 when no centroid jumps more than twice the world's fastest step, 0.0 when
    one does, nan when no ball is tracked), balls named among the world's `palette`. The audio
    does not change them: computed once."""
    limit = 2.0 * fastest_step(frames.shape[-2], fps)
    rows = []
    for video, balls in zip(frames, colors):
        jump = max_jump(video, balls, palette)
        smooth = float(jump <= limit) if np.isfinite(jump) else jump
        rows.append({"balls_right": balls_right(video, balls, palette), "smooth": smooth})
    return rows


def _metrics(frames, waves, fps: float, sample_rate: int, shapes, palette) -> list[dict]:
    return [
        clip_sync_metrics(v, fps, a, sample_rate, palette=palette) | s
        for v, a, s in zip(frames, waves, shapes)
    ]


def evaluate_sync(
    system: System,
    params,
    num_clips: int,
    *,
    out_dir: str | None = None,
    with_truth: bool = True,
    modes: Sequence[str] = generation.MODES,
    world_seed: int | None = None,
    colors: Sequence[str] | None = None,
    keep: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    **sample_overrides,
) -> dict[str, list[dict[str, float]]]:
    """Generates clips for held-out prompts in each of `modes`; per-clip sync metrics per row.

    Rows: each mode's generated clips and the same clips with the audio shuffled across clips
    (chance level), plus ground truth and shuffled ground truth when `with_truth`. Clips are
    written to `out_dir` when given. The prompts come from the world seeded `world_seed`
    (default: the run's seed + EVAL_SEED_OFFSET) with the palette `colors` (default: the run's
    `data.colors`; a fine-tune's old world, bench/demo_lora). `sample_overrides` (guidance,
    s_v, s_a, cfg_scale, steps, solver) override the run's (`system.sampler`). `keep`, when
    given, receives each mode's (frames, waves) and the ground truth's, under the mode's name
    and 'ground truth'.
    """
    d, run = system.clip, system.sampler
    seed = run.seed + EVAL_SEED_OFFSET if world_seed is None else world_seed
    if colors is not None:
        d = dataclasses.replace(d, colors=tuple(colors))
    world = SoundingShapes.like(d, num_clips, seed)
    clips = [world[i] for i in range(num_clips)]
    colors = [world.scene(i).colors for i in range(num_clips)]  # (cheap: no rendering)
    truth_v = np.stack([c["video"] for c in clips])  # [N, F, H, W, 3]
    truth_a = np.stack([c["audio"] for c in clips])  # [N, S]
    batch = generation.prompt_batch(
        system, [c["video_caption"] for c in clips], [c["audio_caption"] for c in clips]
    )
    rng = jax.random.key(run.seed)
    shuffle = lambda x: np.roll(x, 1, axis=0)  # pair each clip with another clip's audio
    score = lambda v, a, shapes: _metrics(v, a, d.fps, d.sample_rate, shapes, world.colors)
    rows = {}
    if keep is not None:
        keep["ground truth"] = (truth_v, truth_a)
    if with_truth:
        shapes = _frame_metrics(truth_v, d.fps, colors, world.colors)
        rows["ground truth"] = score(truth_v, truth_a, shapes)
        rows["ground truth, shuffled"] = score(truth_v, shuffle(truth_a), shapes)
    # A model trained on reference first frames (TI2V, `cts.ref_image_prob` > 0) is evaluated
    # with the clip's first frame as the reference, as the paper always samples.
    ref = {"ref_image": truth_v[:, 0]} if run.ref_image else {}
    givens = {"t2av": ref, "a2v": {"given_audio": truth_a, **ref}, "v2a": {"given_video": truth_v}}
    for mode in modes:
        start = time.time()
        frames, waves = generation.generate(
            system, params, rng, batch, mode=mode, **givens[mode], **sample_overrides
        )
        logging.info("%s: %d clips in %.1f s", mode, num_clips, time.time() - start)
        for i, (v, a) in enumerate(zip(frames, waves) if out_dir else ()):
            write_av(
                os.path.join(out_dir, f"{mode}_{i}.mp4"), v, d.fps, a, d.sample_rate, overwrite=True
            )
        if keep is not None:
            keep[mode] = (frames, waves)
        shapes = _frame_metrics(frames, d.fps, colors, world.colors)
        rows[f"{mode} generated"] = score(frames, waves, shapes)
        rows[f"{mode} shuffled"] = score(frames, shuffle(waves), shapes)
    return rows
