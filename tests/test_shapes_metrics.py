"""Ball counts, colours and tracks read from frames: right on the world's own clips, wrong on
speckle, on a missing or an extra ball, and on a ball that teleports."""

import numpy as np
import pytest

from harmony_jax.data.sounding_shapes import SoundingShapes
from harmony_jax.eval import shapes, sync

FPS = 8.0


@pytest.fixture(scope="module")
def world():
    return SoundingShapes(64, FPS, 16, 20, 20, 16000, seed=3)


def test_ground_truth_frames_show_exactly_the_captioned_balls(world):
    for i in range(12):
        clip, scene = world[i], world.scene(i)
        assert shapes.balls_right(clip["video"], scene.colors) == 1.0
        # anti-aliased edges move the centroid a little off the true centre
        assert shapes.max_jump(clip["video"], scene.colors) <= 1.2 * shapes.fastest_step(20, FPS)


def test_wrong_frames_are_not_right(world):
    clip, scene = world[0], world.scene(0)
    video = clip["video"]
    other = next(c for c in ("red", "green", "blue") if c not in scene.colors)
    assert shapes.balls_right(video, (*scene.colors, other)) == 0.0  # a ball missing
    assert shapes.balls_right(video, scene.colors[:1] * 3) == 0.0  # wrong count
    speckle = np.random.default_rng(0).uniform(-1, 1, video.shape).astype(np.float32)
    assert shapes.balls_right(speckle, scene.colors) < 0.1


def test_a_ball_that_jumps_is_caught(world):
    i = next(i for i in range(64) if len(world.scene(i).colors) == 1)
    video, colors = world[i]["video"].copy(), world.scene(i).colors
    video[8:] = np.flip(video[8:], axis=(1, 2))  # the ball reappears mirrored mid-clip
    assert shapes.max_jump(video, colors) > 2 * shapes.fastest_step(20, FPS)


def test_paired_bootstrap_interval_excludes_zero_only_for_a_real_gap():
    rng = np.random.default_rng(0)
    chance = rng.uniform(0, 0.3, 32)
    low, high = sync.paired_bootstrap_ci(chance + 0.4, chance)
    assert low == pytest.approx(0.4) and high == pytest.approx(0.4)
    low, high = sync.paired_bootstrap_ci(rng.permutation(chance), chance)
    assert low < 0 < high


def test_versus_shuffled_table_rows():
    row = lambda f1: {"event_f1": f1}
    table = sync.versus_shuffled(
        {
            "ground truth": [row(1.0)] * 4,
            "ground truth, shuffled": [row(0.2)] * 4,
            "t2av generated": [row(0.6)] * 4,
            "t2av shuffled": [row(0.1)] * 4,
        }
    )
    lines = table.splitlines()[2:]
    assert lines[0].split()[:5] == ["ground", "truth", "1.000", "0.200", "5.0"]
    assert lines[1].split()[:4] == ["t2av", "0.600", "0.100", "6.0"]
    assert "[+0.500, +0.500]" in lines[1]
    nothing = sync.versus_shuffled({"a2v generated": [row(0.0)], "a2v shuffled": [row(0.0)]})
    assert nothing.splitlines()[2].split()[:4] == ["a2v", "0.000", "0.000", "nan"]  # not inf
