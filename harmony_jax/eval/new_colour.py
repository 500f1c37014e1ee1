"""Whether a model draws and sounds a colour: its share of the bright pixels and of the tones.

What a fine-tune onto a colour the base never saw (bench/demo_lora.py) must move. Bright pixels
(eval/shapes.BRIGHT) are named by the palette colour they point to; tone energy is the STFT
power in log-frequency bands around each palette pitch, each band reaching halfway (in log
frequency) to its neighbours, so the bands tile the palette's range.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import scipy.signal

from harmony_jax import generation
from harmony_jax.data.sounding_shapes import BACKGROUND, COLOR_NAMES, PALETTE, SoundingShapes
from harmony_jax.eval.shapes import BRIGHT, palette_directions
from harmony_jax.system import System

_STFT_SECONDS = 0.032  # window: 31 Hz bins, far finer than the palette's fifths


def colour_share(videos: np.ndarray, color: str) -> float:
    """Mean over clips [N, F, H, W, 3] (in [-1, 1]) of `color`'s share of the bright pixels
    (0 for a clip without any)."""
    offset = (np.asarray(videos, np.float64) + 1.0) / 2.0 - np.asarray(BACKGROUND)
    bright = np.abs(offset).max(-1) > BRIGHT  # [N, F, H, W]
    named = np.argmax(offset @ palette_directions().T, axis=-1) == COLOR_NAMES.index(color)
    hits = (bright & named).sum(axis=(1, 2, 3))
    return float(np.mean(hits / np.maximum(bright.sum(axis=(1, 2, 3)), 1)))


def _pitch_bands() -> np.ndarray:
    """[K, 2] Hz edges around each palette pitch (COLOR_NAMES order), tiling in log frequency."""
    pitches = np.array([PALETTE[n][1] for n in COLOR_NAMES])
    order = np.argsort(pitches)
    logs = np.log(pitches[order])
    mids = (logs[1:] + logs[:-1]) / 2
    low = np.concatenate([[2 * logs[0] - mids[0]], mids])
    high = np.concatenate([mids, [2 * logs[-1] - mids[-1]]])
    bands = np.empty((len(pitches), 2))
    bands[order] = np.exp(np.stack([low, high], axis=-1))
    return bands


def pitch_share(waves: np.ndarray, sample_rate: int, color: str) -> float:
    """Mean over clips [N, S] of the tone energy in `color`'s pitch band over that in all the
    palette's bands (0 for a silent clip)."""
    nperseg = int(_STFT_SECONDS * sample_rate)
    freqs, _, spec = scipy.signal.stft(np.asarray(waves, np.float64), sample_rate, nperseg=nperseg)
    power = (np.abs(spec) ** 2).sum(-1)  # [N, bins]
    energy = np.stack(
        [power[:, (freqs >= lo) & (freqs < hi)].sum(-1) for lo, hi in _pitch_bands()], axis=-1
    )  # [N, K]
    share = energy[:, COLOR_NAMES.index(color)] / np.maximum(energy.sum(-1), 1e-20)
    return float(np.mean(share))


def colour_prompts(system: System, color: str, num_clips: int, seed: int) -> list[dict]:
    """`num_clips` clips of a world of `color` alone (one ball each): their captions name it."""
    world = SoundingShapes.like(dataclasses.replace(system.clip, colors=(color,)), num_clips, seed)
    return [world[i] for i in range(num_clips)]


def colour_shares(
    system: System, params, color: str, num_clips: int, seed: int, keep: dict | None = None
) -> dict[str, float]:
    """T2AV samples of prompts naming `color` alone: its pixel and pitch shares, beside those
    of the ground-truth clips of the same prompts (the ceiling the world itself sets). `keep`,
    when given, receives the samples and the ground truth as (frames, waves) under 't2av' and
    'ground truth'."""
    clips = colour_prompts(system, color, num_clips, seed)
    batch = generation.prompt_batch(
        system, [c["video_caption"] for c in clips], [c["audio_caption"] for c in clips]
    )
    frames, waves = generation.generate(system, params, jax.random.key(seed), batch, mode="t2av")
    rate = system.clip.sample_rate
    truth_v = np.stack([c["video"] for c in clips])
    truth_a = np.stack([c["audio"] for c in clips])
    if keep is not None:
        keep.update({"t2av": (frames, waves), "ground truth": (truth_v, truth_a)})
    return {
        "colour": colour_share(frames, color),
        "pitch": pitch_share(waves, rate, color),
        "truth colour": colour_share(truth_v, color),
        "truth pitch": pitch_share(truth_a, rate, color),
    }
