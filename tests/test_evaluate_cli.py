"""The evaluate CLI on ground-truth sounding-shapes clips (table, JSON, plot, errors) and on clips
made in the test: variable frame rate, 4K (peak memory in a subprocess), no sync evidence."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from clips import flash_clip, vfr_times, write_clip

from harmony_jax import evaluate
from harmony_jax.data.sounding_shapes import SoundingShapes
from harmony_jax.media import MediaError, write_av

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS, RATE = 8.0, 16000


@pytest.fixture(scope="module")
def world():
    return SoundingShapes(
        num_clips=8, fps=FPS, num_frames=16, height=32, width=32, sample_rate=RATE, seed=0
    )


@pytest.fixture(scope="module")
def folder(world, tmp_path_factory):
    """Three ground-truth clips as .mp4, and a file that is not a clip."""
    path = tmp_path_factory.mktemp("clips")
    for i in range(3):
        write_av(path / f"gt_{i}.mp4", world[i]["video"], FPS, world[i]["audio"], RATE)
    (path / "notes.txt").write_text("not a clip")
    return str(path)


def test_ground_truth_is_in_sync(folder, tmp_path):
    results = evaluate.evaluate(folder, sounding_shapes=True)
    assert list(results["clips"]) == ["gt_0.mp4", "gt_1.mp4", "gt_2.mp4"]
    mean = results["mean"]
    assert mean["event_f1"] > 0.9
    assert mean["mean_abs_offset_ms"] < 0.5 / FPS * 1000
    assert abs(mean["av_offset_ms"]) <= 0.5 / FPS * 1000
    table = evaluate.format_table(results)
    assert "event F1" in table and "mean (3)" in table and len(table.splitlines()) == 7
    evaluate.write_json(str(tmp_path / "r.json"), results)
    assert json.loads((tmp_path / "r.json").read_text())["mean"]["event_f1"] > 0.9


def test_late_audio_gives_a_positive_offset(world, tmp_path):
    clip, delay = world[3], 0.25
    late = np.concatenate([np.zeros(int(delay * RATE), np.float32), clip["audio"]])
    write_av(tmp_path / "late.mp4", clip["video"], FPS, late[: len(clip["audio"])], RATE)
    results = evaluate.evaluate(str(tmp_path / "late.mp4"), plot=str(tmp_path / "p.png"))
    assert list(results["clips"]["late.mp4"]) == [  # no event metrics asked
        "av_offset_ms",
        "peak_to_sidelobe",
        "motion_events",
        "onset_events",
    ]
    assert results["clips"]["late.mp4"]["av_offset_ms"] == pytest.approx(delay * 1000, abs=40)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unusable_paths_are_named(world, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no clips"):
        evaluate.evaluate(str(tmp_path))
    write_av(tmp_path / "mute.mp4", world[0]["video"], FPS)
    with pytest.raises(MediaError, match="mute.mp4: no audio stream"):
        evaluate.evaluate(str(tmp_path))


def test_cli_prints_table_and_writes_json(folder, tmp_path):
    out = tmp_path / "sync.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harmony_jax.evaluate",
            folder,
            "--sounding_shapes",
            "--json",
            str(out),
            "--max_lag",
            "0.5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "gt_2.mp4" in done.stdout and "mean (3)" in done.stdout
    results = json.loads(out.read_text())
    assert results["max_lag_s"] == 0.5 and set(results["clips"]) == {
        "gt_0.mp4",
        "gt_1.mp4",
        "gt_2.mp4",
    }


def test_variable_frame_rate_clip_measures_in_sync(tmp_path):
    """8 fps for 2 s then 30 fps, a flash and a click together twice in each part: picking frames
    by index at the average rate read this as 830 ms out of sync."""
    times = vfr_times([(8, 2), (30, 2)])
    frames, audio = flash_clip(times, [times[4], times[11], times[31], times[56]])
    write_clip(tmp_path / "vfr.mp4", frames, times, audio=audio)
    metrics = evaluate.evaluate(str(tmp_path / "vfr.mp4"))["clips"]["vfr.mp4"]
    assert abs(metrics["av_offset_ms"]) <= 20, metrics
    assert metrics["onset_events"] == 4 and metrics["peak_to_sidelobe"] > 3


def test_clips_without_sync_evidence_are_named_and_left_out_of_the_mean(tmp_path):
    times = np.arange(32) / 8
    frames, audio = flash_clip(times, [times[6], times[20]])
    dark, _ = flash_clip(times, [])
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(audio)) / RATE).astype(np.float32)
    for name, (video, sound) in {
        "a_good": (frames, audio),
        "static": (dark, audio),
        "silent": (frames, np.zeros_like(audio)),
        "tone": (frames, tone),
    }.items():
        write_clip(tmp_path / f"{name}.mp4", video, times, audio=sound)
    results = evaluate.evaluate(str(tmp_path), plot=str(tmp_path / "p.png"))
    clips = results["clips"]
    assert results["no_evidence"] == ["silent.mp4", "static.mp4", "tone.mp4"]
    assert abs(clips["a_good.mp4"]["av_offset_ms"]) <= 20
    assert clips["static.mp4"]["motion_events"] == 0 and clips["silent.mp4"]["onset_events"] == 0
    assert clips["tone.mp4"]["onset_events"] == 0
    assert results["mean"]["av_offset_ms"] == clips["a_good.mp4"]["av_offset_ms"]
    table = evaluate.format_table(results)
    assert table.count("no sync evidence") == 3
    assert "mean (1 of 4: 3 without evidence excluded)" in table
    evaluate.write_json(str(tmp_path / "r.json"), results)
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["clips"]["tone.mp4"]["av_offset_ms"] is None
    assert written["no_evidence"] == results["no_evidence"]


_PEAK = """
import resource, sys
from harmony_jax import evaluate
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
offset = evaluate.evaluate(sys.argv[1])["mean"]["av_offset_ms"]
print(offset, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _peak(path) -> tuple[float, float]:
    """(AV offset ms, peak memory MB over the imports) of evaluating one clip."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert done.returncode == 0, done.stderr
    return tuple(float(x) for x in done.stdout.split()[-2:])


def test_4k_clip_costs_what_a_small_one_does(tmp_path):
    """1.5 s of 4K: frames are decoded straight to the 64-pixel analysis size (the whole clip
    as float RGB, as evaluate read it before, is over 3 GB)."""
    times = np.arange(12) / 8
    small, audio = flash_clip(times, [times[3], times[8]], size=(72, 128))
    texture = np.random.default_rng(0).integers(0, 60, (72, 128, 3), np.uint8)
    big = lambda i: np.repeat(np.repeat(small[i] | texture, 30, axis=0), 30, axis=1)
    write_clip(tmp_path / "small.mp4", small | texture, times, audio=audio, crf="35")
    write_clip(tmp_path / "4k.mp4", big, times, audio=audio, crf="35")  # 2160 x 3840
    (small_offset, base), (offset, four_k) = (
        _peak(tmp_path / "small.mp4"),
        _peak(tmp_path / "4k.mp4"),
    )
    assert abs(offset) <= 20 and abs(small_offset) <= 20
    assert four_k - base < 150, (base, four_k)
