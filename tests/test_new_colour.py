"""The new-colour measures read ground-truth clips exactly: a world of one colour scores 1 for
it and 0 for the others, in its pixels and in its pitch."""

import numpy as np
import pytest

from harmony_jax.data.sounding_shapes import COLOR_NAMES, SoundingShapes
from harmony_jax.eval.new_colour import colour_share, pitch_share


@pytest.mark.parametrize("color", ["white", "red", "cyan"])
def test_a_one_colour_world_is_all_that_colour(color):
    world = SoundingShapes(6, 8.0, 12, 16, 16, 16000, seed=1, radius_fraction=0.15, colors=(color,))
    videos = np.stack([world[i]["video"] for i in range(6)])
    waves = np.stack([world[i]["audio"] for i in range(6)])
    assert colour_share(videos, color) == 1.0
    # red's octave lies in blue's band: 0.3 of its amplitude, 1/12 of its energy
    assert pitch_share(waves, 16000, color) > 0.9
    for other in COLOR_NAMES:
        if other != color:
            assert colour_share(videos, other) == 0.0
            assert pitch_share(waves, 16000, other) < 0.1


def test_empty_frames_and_silence_share_nothing():
    assert colour_share(-np.ones((2, 3, 8, 8, 3)), "white") == 0.0
    assert pitch_share(np.zeros((2, 8000)), 16000, "white") == 0.0
