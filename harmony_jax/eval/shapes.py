"""Whether generated sounding-shapes frames show the captioned balls: count, colour, smooth track.

Sync scores alone can be earned by speckle that flickers at the right times; these read the
frames as a person would. A ball is a connected component of bright pixels (offset
from the background beyond `BRIGHT`) of at least `MIN_PIXELS`, named by the palette colour its
mean offset points to; a frame is right when its balls are exactly the captioned colours. A
track is each captioned colour's centroid (eval/sync.color_tracks); a jump larger than twice the
world's fastest speed is a ball that vanished and reappeared elsewhere, not one that moved.
Four-neighbour components over at least half coverage keep two balls apart in every clip of
the world (they are drawn at least a pixel apart; their soft edges may touch diagonally).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.ndimage

from harmony_jax.data.sounding_shapes import (
    BACKGROUND,
    COLOR_NAMES,
    PALETTE,
    SPEEDS,
    WORLD_COLORS,
)
from harmony_jax.eval.sync import color_tracks

BRIGHT = 0.45  # max-channel offset from the background (values in [0, 1]) of a ball pixel
MIN_PIXELS = 3  # smaller components are noise (the default ball covers ~13 pixels at 20x20)
_FOUR_NEIGHBOURS = scipy.ndimage.generate_binary_structure(2, 1)


def palette_directions(palette: Sequence[str] = COLOR_NAMES) -> np.ndarray:
    """Unit offsets [K, 3] from the background to each colour of `palette`, in its order."""
    offsets = np.array([PALETTE[n][0] for n in palette]) - np.asarray(BACKGROUND)
    return offsets / np.linalg.norm(offsets, axis=-1, keepdims=True)


def frame_balls(frame: np.ndarray, palette: Sequence[str] = WORLD_COLORS) -> list[str]:
    """Colours of `palette` (the world's) of the balls in one frame [H, W, 3] in [-1, 1], one
    entry per ball."""
    offset = (np.asarray(frame, np.float64) + 1.0) / 2.0 - np.asarray(BACKGROUND)  # [H, W, 3]
    labels, count = scipy.ndimage.label(np.abs(offset).max(-1) > BRIGHT, _FOUR_NEIGHBOURS)
    directions = palette_directions(palette)
    balls = []
    for component in range(1, count + 1):
        pixels = labels == component
        if pixels.sum() >= MIN_PIXELS:
            mean = offset[pixels].mean(axis=0)
            balls.append(palette[int(np.argmax(directions @ mean))])
    return balls


def balls_right(
    video: np.ndarray, colors: Sequence[str], palette: Sequence[str] = WORLD_COLORS
) -> float:
    """Fraction of frames of `video` [F, H, W, 3] whose balls are exactly `colors` (named
    among `palette`)."""
    want = sorted(colors)
    return float(np.mean([sorted(frame_balls(frame, palette)) == want for frame in video]))


def max_jump(
    video: np.ndarray, colors: Sequence[str], palette: Sequence[str] = WORLD_COLORS
) -> float:
    """Largest frame-to-frame centroid move (pixels) of any captioned colour; nan if never seen
    in two consecutive frames."""
    tracks = color_tracks(video, palette=palette)
    steps = np.concatenate(
        [np.linalg.norm(np.diff(tracks[c], axis=0), axis=-1) for c in colors]
    )  # nan where the colour is absent in either frame
    steps = steps[np.isfinite(steps)]
    return float(steps.max()) if len(steps) else float("nan")


def fastest_step(width: int, fps: float) -> float:
    """Pixels per frame of the world's fastest ball (its speed along one axis is at most this)."""
    return SPEEDS["fast"][1] * width / fps
