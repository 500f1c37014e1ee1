"""Sync metrics: perfect on ground-truth sounding-shapes clips, chance-level when audio is wrong."""

import numpy as np
import pytest
import scipy.ndimage

from harmony_jax.data.sounding_shapes import SoundingShapes
from harmony_jax.eval import sync

FPS, SR = 8.0, 16000
FRAME = 1.0 / FPS


@pytest.fixture(scope="module")
def clips():
    source = SoundingShapes(
        num_clips=64, fps=FPS, num_frames=16, height=32, width=32, sample_rate=SR, seed=0
    )
    return [source[i] for i in range(12)]


def _truth(clip) -> np.ndarray:
    return clip["bounce_times"][: clip["num_bounces"]].astype(np.float64)


def _shift(audio: np.ndarray, seconds: float) -> np.ndarray:
    """Audio delayed by `seconds` (advanced if negative), length kept."""
    n = int(round(abs(seconds) * SR))
    silence = np.zeros(n, audio.dtype)
    return (
        np.concatenate([silence, audio[:-n]])
        if seconds > 0
        else np.concatenate([audio[n:], silence])
    )


def test_event_f1_on_hand_made_lists():
    f1, precision, recall = sync.event_f1(
        np.array([0.5, 1.0, 1.5]), np.array([0.52, 1.1, 1.49, 1.8]), tolerance=0.05
    )
    assert (precision, recall) == pytest.approx((2 / 4, 2 / 3))
    assert f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert sync.mean_abs_offset_ms(
        np.array([0.5, 1.0, 1.5]), np.array([0.52, 1.1, 1.49, 1.8]), tolerance=0.05
    ) == pytest.approx(15.0)
    # One-to-one: two estimates near one reference count once, the closer one is kept.
    assert sync.event_f1(np.array([1.0]), np.array([0.98, 1.01]), 0.05) == pytest.approx(
        (2 / 3, 0.5, 1.0)
    )
    assert sync.mean_abs_offset_ms(np.array([1.0]), np.array([0.98, 1.01]), 0.05) == (
        pytest.approx(10.0)
    )
    # The matching maximises the number of pairs, not greedily the nearest.
    assert sync.event_f1(np.array([1.0, 1.08]), np.array([1.04, 1.12]), 0.05)[0] == 1.0
    assert sync.event_f1(np.array([1.0]), np.zeros(0), 0.05) == (0.0, 0.0, 0.0)
    assert np.isnan(sync.mean_abs_offset_ms(np.array([1.0]), np.array([2.0]), 0.05))


def test_detectors_recover_ground_truth(clips):
    for clip in clips:
        truth = _truth(clip)
        bounces = sync.detect_bounces(clip["video"], FPS)
        onsets = sync.detect_onsets(clip["audio"], SR)
        np.testing.assert_allclose(bounces, truth, atol=0.005)
        np.testing.assert_allclose(onsets, truth, atol=0.005)


def test_bounces_survive_blurry_noisy_frames(clips):
    rng = np.random.default_rng(0)
    scores = []
    for clip in clips:
        video = scipy.ndimage.gaussian_filter(clip["video"], (0, 1.5, 1.5, 0))
        video = np.clip(video + rng.normal(0, 0.05, video.shape), -1, 1)
        scores.append(sync.event_f1(_truth(clip), sync.detect_bounces(video, FPS), 0.5 * FRAME)[0])
    assert np.mean(scores) > 0.95


def test_no_onsets_in_silence_or_steady_noise():
    assert len(sync.detect_onsets(np.zeros(SR), SR)) == 0
    noise = np.random.default_rng(0).normal(0, 0.1, 2 * SR)
    assert len(sync.detect_onsets(noise, SR)) == 0


def test_metrics_are_perfect_on_ground_truth_clips(clips):
    rows = [sync.clip_sync_metrics(c["video"], FPS, c["audio"], SR) for c in clips]
    assert min(r["event_f1"] for r in rows) == 1.0
    assert max(r["mean_abs_offset_ms"] for r in rows) < 5.0
    assert max(abs(r["av_offset_ms"]) for r in rows) <= 1000 * FRAME


def test_shifted_or_shuffled_audio_scores_near_chance(clips):
    shifted = [
        sync.clip_sync_metrics(c["video"], FPS, _shift(c["audio"], 0.5), SR)["event_f1"]
        for c in clips
    ]
    shuffled = [
        sync.clip_sync_metrics(c["video"], FPS, clips[(i + 1) % len(clips)]["audio"], SR)[
            "event_f1"
        ]
        for i, c in enumerate(clips)
    ]
    # Chance F1 is about (events per clip) x (2 x tolerance) / duration ~ 0.2 in this world.
    assert np.mean(shifted) < 0.25
    assert np.mean(shuffled) < 0.3


def test_av_offset_recovers_a_known_shift(clips):
    errors = [
        sync.av_offset(c["video"], FPS, _shift(c["audio"], shift), SR) - shift
        for c in clips
        for shift in (0.25, -0.25)
    ]
    assert np.mean(np.abs(errors) <= FRAME) >= 0.9
    assert np.median(np.abs(errors)) <= 0.02


def test_sync_table_averages_per_name():
    row = dict(event_f1=1.0, mean_abs_offset_ms=2.0, av_offset_ms=10.0)
    table = sync.sync_table(
        {
            "ground truth": [row, dict(row, event_f1=0.5, mean_abs_offset_ms=float("nan"))],
            "shuffled": [dict(row, mean_abs_offset_ms=float("nan"))],
        }
    )
    lines = table.splitlines()
    assert lines[2].split() == ["ground", "truth", "0.750", "2.0", "10.0", "2"]
    assert lines[3].split() == ["shuffled", "1.000", "nan", "10.0", "1"]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\].*\(16, 32, 32\)"):
        sync.detect_bounces(np.zeros((16, 32, 32)), FPS)
    with pytest.raises(ValueError, match=r"mono.*\(2, 100\)"):
        sync.detect_onsets(np.zeros((2, 100)), SR)


def test_motion_change_in_chunks_is_exact(monkeypatch):
    """Blurring a long clip a chunk of frames at a time (bounded memory) changes nothing."""
    video = np.random.default_rng(0).uniform(-1, 1, (150, 70, 130, 3)).astype(np.float32)
    chunked = sync.motion_change(video)
    monkeypatch.setattr(sync, "_CHUNK", len(video))
    np.testing.assert_array_equal(chunked, sync.motion_change(video))
    assert chunked.shape == (148,)


def test_contact_sheet_is_a_png_with_a_panel_pair_per_clip(clips, tmp_path):
    from harmony_jax.eval.contact_sheet import write_contact_sheet

    video = np.stack([c["video"] for c in clips[:2]])
    audio = np.stack([c["audio"] for c in clips[:2]])
    path = str(tmp_path / "sheet.png")
    write_contact_sheet(
        path, {"t2av": (video, audio[::-1]), "ground truth": (video, audio)}, FPS, SR, per_mode=2
    )
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]  # nothing half-written
