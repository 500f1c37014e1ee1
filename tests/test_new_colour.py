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


def test_the_detectors_read_the_worlds_own_palette():
    """A white ball's bounces are seen where the palette holds white, and not by the default
    detectors (the six colours), which compressed footage of those six relies on."""
    from harmony_jax.eval.shapes import balls_right
    from harmony_jax.eval.sync import clip_sync_metrics

    world = SoundingShapes(
        4, 8.0, 12, 16, 16, 16000, seed=1, radius_fraction=0.15, colors=("white",)
    )
    for i in range(4):
        clip = world[i]
        own = clip_sync_metrics(clip["video"], 8.0, clip["audio"], 16000, palette=("white",))
        assert own["event_f1"] == 1.0
        assert clip_sync_metrics(clip["video"], 8.0, clip["audio"], 16000)["num_bounces"] == 0
        assert balls_right(clip["video"], ("white",), palette=("white", "red")) == 1.0
