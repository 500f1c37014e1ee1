"""The sounding-shapes world: deterministic clips, bounce times exact in both modalities."""

import pickle

import grain
import numpy as np
import pytest

from harmony_jax.data import sounding_shapes as ss

FPS, FRAMES, SIZE, SR = 8.0, 16, 32, 16000


@pytest.fixture(scope="module")
def source():
    return ss.SoundingShapes(
        num_clips=64, fps=FPS, num_frames=FRAMES, height=SIZE, width=SIZE, sample_rate=SR, seed=0
    )


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_shapes_dtypes_and_ranges(source):
    for index in range(8):
        clip = source[index]
        assert clip["video"].shape == (FRAMES, SIZE, SIZE, 3) and clip["video"].dtype == np.float32
        assert clip["audio"].shape == (round(FRAMES / FPS * SR),)
        assert clip["audio"].dtype == np.float32
        assert -1 <= clip["video"].min() and clip["video"].max() <= 1
        assert -1 <= clip["audio"].min() and clip["audio"].max() <= 1
        assert clip["transcript"] == ""
        assert np.array_equal(clip["ref_frame"], clip["video"][0])
        n = int(clip["num_bounces"])
        times = clip["bounce_times"]
        assert times.shape == (ss.MAX_EVENTS,) and np.all(times[n:] == -1)
        assert np.all(np.diff(times[:n]) > 0) and 0 < times[0] and times[n - 1] < FRAMES / FPS


def test_same_index_same_clip_and_indices_differ(source):
    again = ss.SoundingShapes(64, FPS, FRAMES, SIZE, SIZE, SR, seed=0)
    assert _equal(source[5], again[5])
    assert not np.array_equal(source[5]["video"], source[6]["video"])
    other_seed = ss.SoundingShapes(64, FPS, FRAMES, SIZE, SIZE, SR, seed=1)
    assert not np.array_equal(source[5]["video"], other_seed[5]["video"])


def test_every_ball_bounces_and_captions_name_it(source):
    for index in range(20):
        scene = source.scene(index)
        assert set(scene.bounce_balls) == set(range(len(scene.colors)))
        video_caption, audio_caption = ss.captions(scene)
        assert all(c in video_caption and c in audio_caption for c in scene.colors)
        assert scene.speed in video_caption
        assert ("bounces" in video_caption) == (len(scene.colors) == 1)


def test_balls_touch_a_wall_exactly_at_bounce_times(source):
    for index in range(20):
        scene = source.scene(index)
        for t, ball in zip(scene.bounce_times, scene.bounce_balls):
            before, at, after = ss.ball_centres(
                scene, np.array([t - 1e-3, t, t + 1e-3]), SIZE, SIZE
            )[:, ball]
            gap = np.minimum(at - scene.radius, SIZE - scene.radius - at)  # ball edge to wall
            axis = int(np.argmin(gap))
            assert gap[axis] == pytest.approx(0.0, abs=1e-6)
            assert (at[axis] - before[axis]) * (after[axis] - at[axis]) < 0  # velocity reverses


def test_rendered_balls_sit_at_the_trajectory(source):
    scene = source.scene(3)
    video = source[3]["video"]
    centres = ss.ball_centres(scene, np.arange(FRAMES) / FPS, SIZE, SIZE)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    background = np.asarray(ss.BACKGROUND) * 2 - 1
    for ball, name in enumerate(scene.colors):
        direction = np.asarray(ss.PALETTE[name][0]) * 2 - 1 - background
        alpha = (video - background) @ direction / (direction @ direction)  # [F, H, W]
        residual = np.linalg.norm(video - background - alpha[..., None] * direction, axis=-1)
        weight = np.where(residual < 1e-3, alpha, 0.0)  # this ball's coverage, others excluded
        found = np.stack([(weight * xs).sum((1, 2)), (weight * ys).sum((1, 2))], -1)
        found /= weight.sum((1, 2))[:, None]
        np.testing.assert_allclose(found, centres[:, ball], atol=0.05)


def test_audio_sounds_at_bounces_and_is_silent_elsewhere(source):
    for index in range(10):
        clip = source[index]
        audio = clip["audio"]
        times = clip["bounce_times"][: clip["num_bounces"]]
        for t in times:
            n = int(t * SR)
            assert np.sqrt(np.mean(audio[n : n + int(0.02 * SR)] ** 2)) > 0.1
        since = np.arange(len(audio)) / SR - times[:, None]  # [E, S]
        since = np.where(since >= 0, since, np.inf).min(0)
        assert np.abs(audio[since > ss.TONE_LENGTH]).max() == 0.0
        assert np.abs(audio[since > 0.2]).max() < 0.01


def test_picklable_for_grain_workers(source):
    restored = pickle.loads(pickle.dumps(source))
    assert _equal(restored[7], source[7])
    assert repr(restored) == repr(source)


def test_works_as_a_grain_source(source):
    dataset = grain.MapDataset.source(source).shuffle(seed=0).batch(4)
    batch = dataset[0]
    assert len(dataset) == len(source) // 4
    assert batch["video"].shape == (4, FRAMES, SIZE, SIZE, 3)
    assert batch["audio"].shape == (4, round(FRAMES / FPS * SR))
    assert batch["bounce_times"].shape == (4, ss.MAX_EVENTS)
    assert len(batch["video_caption"]) == 4


def test_errors_name_the_problem(source):
    with pytest.raises(IndexError, match="index 64"):
        source[64]
    with pytest.raises(ValueError, match="fps=0.5"):  # 8 s clips cannot keep bounces 4 s apart
        ss.SoundingShapes(8, 0.5, 4, SIZE, SIZE, SR)[0]
    with pytest.raises(ValueError, match="num_frames=3"):
        ss.SoundingShapes(8, FPS, 3, SIZE, SIZE, SR)
    with pytest.raises(ValueError, match=r"data.ball_radius"):
        ss.SoundingShapes(8, FPS, FRAMES, SIZE, SIZE, SR, radius_fraction=0.3)


def test_ball_radius_sets_the_drawn_and_rendered_size():
    big = ss.SoundingShapes(8, FPS, FRAMES, SIZE, SIZE, SR, radius_fraction=0.15)
    scene, video = big.scene(0), big[0]["video"]
    assert scene.radius == pytest.approx(0.15 * SIZE)
    lit = np.abs(video[0] - (np.asarray(ss.BACKGROUND) * 2 - 1)).max(-1) > 1.0  # [H, W]
    disc = np.pi * scene.radius**2 * len(scene.colors)  # the balls' area, pixels
    assert abs(lit.sum() - disc) < 0.15 * disc


def test_palette_of_a_world_is_data_colors():
    """The default world draws from the six colours (clips as before white joined the palette);
    a world of white alone has one white ball per clip, its tone at white's pitch; names outside
    the palette or repeated are refused naming data.colors."""
    default = ss.SoundingShapes(64, FPS, FRAMES, SIZE, SIZE, SR)
    drawn = {c for i in range(64) for c in default.scene(i).colors}
    assert drawn == set(ss.WORLD_COLORS) and "white" not in drawn
    white = ss.SoundingShapes(8, FPS, FRAMES, SIZE, SIZE, SR, colors=("white",))
    for i in range(8):
        clip, scene = white[i], white.scene(i)
        assert scene.colors == ("white",) and clip["video_caption"].startswith("a white ball")
        spectrum = np.abs(np.fft.rfft(clip["audio"]))
        peak = np.fft.rfftfreq(len(clip["audio"]), 1 / SR)[np.argmax(spectrum)]
        assert abs(peak - ss.PALETTE["white"][1]) < 5
    mixed = ss.SoundingShapes(64, FPS, FRAMES, SIZE, SIZE, SR, colors=(*ss.WORLD_COLORS, "white"))
    assert any("white" in mixed.scene(i).colors for i in range(64))
    for colors in (("red", "pink"), ("red", "red"), ()):
        with pytest.raises(ValueError, match="data.colors"):
            ss.SoundingShapes(8, FPS, FRAMES, SIZE, SIZE, SR, colors=colors)


def test_max_balls_one_gives_one_ball_per_clip():
    """data.max_balls=1: every clip one ball (the default 2 draws both counts); 3 is refused."""
    one = ss.SoundingShapes(32, FPS, FRAMES, SIZE, SIZE, SR, max_balls=1)
    assert {len(one.scene(i).colors) for i in range(32)} == {1}
    default = ss.SoundingShapes(32, FPS, FRAMES, SIZE, SIZE, SR)
    assert {len(default.scene(i).colors) for i in range(32)} == {1, 2}
    with pytest.raises(ValueError, match="data.max_balls"):
        ss.SoundingShapes(8, FPS, FRAMES, SIZE, SIZE, SR, max_balls=3)
