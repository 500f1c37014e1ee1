"""A contact sheet of generated sounding-shapes clips: what the sync table's numbers look like.

Per mode, a few clips: a strip of frames, and under it the clip's spectrogram with the bounces
seen in the frames (white) and the onsets heard in the audio (red dashed) marked, so a glance
tells speckle from balls and synchronized clips from chance. Ground truth comes last.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.signal

from harmony_jax.atomic import atomic_path
from harmony_jax.data.sounding_shapes import WORLD_COLORS
from harmony_jax.eval.sync import detect_bounces, detect_onsets

_MAX_FRAMES = 8  # frames shown per clip (evenly spaced)
_SPECTROGRAM_HZ = 4000.0  # top of the spectrogram: the palette's tones sit below it


def _strip(video: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames side by side [H, count * (W + 1), 3] in [0, 1], the frame indices shown)."""
    picks = np.unique(np.linspace(0, len(video) - 1, min(count, len(video))).round().astype(int))
    frames = np.clip((np.asarray(video, np.float64)[picks] + 1.0) / 2.0, 0.0, 1.0)
    gap = np.ones((frames.shape[1], 1, 3))  # a white line between frames
    return np.concatenate([np.concatenate([f, gap], axis=1) for f in frames], axis=1), picks


def _spectrogram(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """(log-magnitude [freq, time] up to `_SPECTROGRAM_HZ`, highest frequency shown)."""
    freqs, _, z = scipy.signal.stft(audio, sample_rate, nperseg=512, noverlap=448)
    keep = freqs <= min(_SPECTROGRAM_HZ, sample_rate / 2)
    return 20.0 * np.log10(np.abs(z[keep]) + 1e-4), float(freqs[keep][-1])


def write_contact_sheet(
    path: str,
    clips: dict[str, tuple[np.ndarray, np.ndarray]],
    fps: float,
    sample_rate: int,
    per_mode: int = 3,
    captions: list[str] | None = None,
    palette: Sequence[str] = WORLD_COLORS,
) -> None:
    """PNG at `path`: one row per name (e.g. 't2av', ..., 'ground truth'), its first `per_mode`
    clips side by side (column j: the j-th prompt in every mode), each clip's frames
    [N, F, H, W, 3] in [-1, 1] above its audio [N, S]'s spectrogram, the bounces of the balls
    of `palette` (the world's colours) and the onsets marked on it."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    names = list(clips)
    columns = min(per_mode, *(len(frames) for frames, _ in clips.values()))
    fig = Figure(figsize=(3.2 * columns, 2.0 * len(names)), layout="constrained")
    axes = fig.subplots(
        2 * len(names), columns, squeeze=False, height_ratios=[1.0, 1.4] * len(names)
    )
    for row, name in enumerate(names):
        frames, waves = clips[name]
        for col in range(columns):
            video, audio = np.asarray(frames[col]), np.asarray(waves[col], np.float64)
            ax_v, ax_a = axes[2 * row, col], axes[2 * row + 1, col]
            strip, picks = _strip(video, _MAX_FRAMES)
            ax_v.imshow(strip, interpolation="nearest")
            title = name if captions is None else f"{name}: {captions[col]}"
            ax_v.set_title(title, fontsize=7, loc="left")
            ax_v.axis("off")
            duration = len(audio) / sample_rate
            spec, top = _spectrogram(audio, sample_rate)
            ax_a.imshow(
                spec,
                origin="lower",
                aspect="auto",
                extent=(0.0, duration, 0.0, top),
                cmap="magma",
                vmin=spec.max() - 60.0,
            )
            bounces = detect_bounces(video, fps, palette=palette)
            onsets = detect_onsets(audio, sample_rate)
            for t in bounces:
                ax_a.axvline(t, color="white", linewidth=1.5)
            for t in onsets:
                ax_a.axvline(t, color="red", linewidth=1.2, linestyle="--")
            ax_a.set_xlim(0.0, duration)
            ax_a.tick_params(labelsize=5)
            ax_a.set_yticks([])
    fig.suptitle(
        f"frames {', '.join(str(p) for p in picks)} of each clip; under them its spectrogram "
        f"(0-{top / 1000:.0f} kHz, time in s): bounces seen in the frames white, onsets heard "
        f"red dashed",
        fontsize=7,
    )
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
