"""read_window on clips the tests make: variable frame rate, display matrix, seeking, memory."""

import os
import subprocess
import sys

import numpy as np
import pytest
from clips import vfr_times, write_clip

from harmony_jax.media_window import frame_rate, read_window

SR = 16000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    """8 fps for 2 s then 30 fps for 2 s; frame k has level 3k; a click at 2.5 s."""
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    times = vfr_times([(8, 2), (30, 2)])
    level = (np.arange(len(times)) * 3 % 256).astype(np.uint8)
    frames = np.broadcast_to(level[:, None, None, None], (len(times), 16, 16, 3)).copy()
    audio = np.zeros(4 * SR, np.float32)
    audio[int(2.5 * SR) : int(2.5 * SR) + 32] = 0.8
    write_clip(path, frames, times, audio=audio)
    return path, times, level


def _shown(times, level, instants):
    return level[[np.searchsorted(times, t + 1e-6, side="right") - 1 for t in instants]]


@pytest.mark.parametrize("start", [0.0, 2.2])
def test_variable_frame_rate_frames_by_time(vfr, start):
    path, times, level = vfr
    window = read_window(path, fps=10, num_frames=10 if start else 40, start=start)
    instants = start + (np.arange(len(window.video)) + 0.5) / 10
    got = window.video[:, 8, 8, 0].astype(int)
    np.testing.assert_allclose(got, _shown(times, level, instants), atol=2)
    click = np.argmax(window.audio[:, 0] > 0.3) / SR
    assert click == pytest.approx(2.5 - start, abs=0.003)  # audio on the same clock
    assert frame_rate(path) == pytest.approx(30.0)


@pytest.mark.parametrize(
    "rotation, hflip, corners",
    [
        (None, False, "RG.."),
        (90, False, "G.R."),
        (-90, False, ".R.G"),
        (180, False, "..GR"),
        (None, True, "GR.."),
        (90, True, ".G.R"),
    ],
)
def test_display_matrix_applied_before_the_crop(tmp_path, rotation, hflip, corners, caplog):
    """Coded 16x32: top-left quarter red, top-right green. Corners read tl, tr, bl, br."""
    image = np.zeros((16, 32, 3), np.uint8)
    image[:8, :16], image[:8, 16:] = (255, 0, 0), (0, 255, 0)
    path = tmp_path / "r.mp4"
    write_clip(path, np.stack([image] * 3), np.arange(3) / 8, rotation=rotation, hflip=hflip)
    with caplog.at_level("INFO"):
        window = read_window(path, fps=8, num_frames=2)
    video = window.video[0]
    h, w = video.shape[:2]
    assert (h, w) == ((32, 16) if rotation in (90, -90) else (16, 32))
    name = lambda px: "R" if px[0] > 128 else "G" if px[1] > 128 else "."
    assert (
        "".join(name(video[y, x]) for y, x in ((1, 1), (1, w - 2), (h - 2, 1), (h - 2, w - 2)))
        == corners
    )
    assert ("display matrix applied" in caplog.text) == (rotation is not None or hflip)
    square = read_window(path, fps=8, num_frames=1, size=(8, 8)).video[0]  # crop upright
    assert square.shape == (8, 8, 3)


_PEAK = """
import resource, sys
from harmony_jax.data.clip_folder import ClipFolder
source = ClipFolder(sys.argv[1], fps=8.0, num_frames=8, height=32, width=32, sample_rate=16000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
item = source[0]
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _peak_mb(root) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(root)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


def _folder(root, frames, times, seconds):
    root.mkdir()
    audio = np.zeros(int(seconds * SR), np.float32)
    write_clip(root / "c.mp4", frames, times, audio=audio, crf="40")
    (root / "captions.jsonl").write_text(
        '{"path": "c.mp4", "video_caption": "v", "audio_caption": "a"}\n'
    )
    return root


def test_item_memory_is_independent_of_source_size_and_length(tmp_path):
    """A 4K clip (1.5 s) and a 60 s clip cost what a small short one does: decoding stops after
    the 1 s window and only 32x32 RGB frames are ever made (decoding all of the 4K clip to RGB
    would peak near 600 MB)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (12, 72, 128, 3), np.uint8)
    big = np.repeat(np.repeat(small[:1], 30, axis=1), 30, axis=2)  # [1, 2160, 3840, 3]
    base = _peak_mb(_folder(tmp_path / "small", small, np.arange(12) / 8, 1.5))
    four_k = _peak_mb(
        _folder(tmp_path / "4k", lambda i: np.roll(big[0], 8 * i, axis=1), np.arange(12) / 8, 1.5)
    )
    long = _peak_mb(_folder(tmp_path / "long", lambda i: small[i % 12], np.arange(480) / 8, 60.0))
    assert long - base < 16, (base, long)
    assert four_k - base < 120, (base, four_k)
