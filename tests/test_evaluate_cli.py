"""The evaluate CLI on ground-truth sounding-shapes clips: table, JSON, plot, and errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from harmony_jax import evaluate
from harmony_jax.data.sounding_shapes import SoundingShapes
from harmony_jax.media import MediaError, write_av

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS, RATE = 8.0, 16000


@pytest.fixture(scope="module")
def world():
    return SoundingShapes(num_clips=8, fps=FPS, num_frames=16, height=32, width=32,
                          sample_rate=RATE, seed=0)


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
    assert list(results["clips"]["late.mp4"]) == ["av_offset_ms"]  # no event metrics asked
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
        [sys.executable, "-m", "harmony_jax.evaluate", folder, "--sounding-shapes", "--json",
         str(out), "--max-lag", "0.5"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "gt_2.mp4" in done.stdout and "mean (3)" in done.stdout
    results = json.loads(out.read_text())
    assert results["max_lag_s"] == 0.5 and set(results["clips"]) == {
        "gt_0.mp4", "gt_1.mp4", "gt_2.mp4"}
