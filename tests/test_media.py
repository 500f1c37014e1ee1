"""Media I/O: .mp4 write / read_window round trip with A/V alignment, atomic and non-overwriting
writes, errors."""

import os
import wave

import numpy as np
import pytest
from clips import read_all

from harmony_jax import media
from harmony_jax.media import MediaError, write_av, write_wav

SR = 16000
FPS = 8.0


def _clip(num_frames=16, height=32, width=48, seconds=2.0, click_at=1.0):
    # Smooth frames (H.264 + 4:2:0 chroma keep them well) whose brightness encodes the index.
    ramp = np.linspace(-0.2, 0.2, width)[None, None, :, None]
    level = np.linspace(-0.7, 0.7, num_frames)[:, None, None, None]
    video = np.broadcast_to(level + ramp, (num_frames, height, width, 3)).astype(np.float32)
    audio = np.zeros(int(seconds * SR), np.float32)
    audio[int(click_at * SR) : int(click_at * SR) + 16] = 0.9
    return video, audio


def test_round_trip_streams_and_alignment(tmp_path):
    video, audio = _clip()
    path = tmp_path / "clip.mp4"
    write_av(path, video, FPS, audio, SR)
    frames, fps, audio_back, rate = read_all(path)
    assert frames.shape == (16, 32, 48, 3) and frames.dtype == np.uint8
    assert fps == FPS and rate == SR
    assert audio_back.shape == (2 * SR, 1) and audio_back.dtype == np.float32
    # The AAC priming is trimmed: the click at 1.0 s reads back at 1.0 s.
    onset = np.argmax(np.abs(audio_back[:, 0]) > 0.3) / SR
    assert abs(onset - 1.0) < 0.003, onset
    error = np.abs(frames.astype(np.float32) / 127.5 - 1.0 - video).max()
    assert error < 0.05, error  # frames in order, up to coding noise


def test_round_trip_stereo_odd_size_ntsc_rate(tmp_path):
    video, audio = _clip(num_frames=10, height=15, width=21, seconds=0.5, click_at=0.25)
    path = tmp_path / "odd.mp4"
    write_av(
        path,
        (video * 127.5 + 127.5).astype(np.uint8),
        30000 / 1001,
        np.stack([audio, -audio], axis=1),
        44100,
    )
    frames, fps, audio_back, rate = read_all(path)
    assert frames.shape == (10, 16, 22, 3)  # padded to even sizes for yuv420p
    assert fps == pytest.approx(30000 / 1001) and rate == 44100
    assert audio_back.shape == (len(audio), 2)  # sample-exact length


def test_video_only(tmp_path):
    video, _ = _clip(num_frames=4)
    write_av(tmp_path / "silent.mp4", video, FPS)
    frames, _, audio, rate = read_all(tmp_path / "silent.mp4")
    assert frames.shape[0] == 4 and audio is None and rate is None


def test_refuses_overwrite(tmp_path):
    video, audio = _clip(num_frames=4, seconds=0.5)
    path = tmp_path / "clip.mp4"
    write_av(path, video, FPS, audio, SR)
    with pytest.raises(FileExistsError, match="clip.mp4"):
        write_av(path, video, FPS, audio, SR)
    write_av(path, video[:2], FPS, audio, SR, overwrite=True)
    assert read_all(path)[0].shape[0] == 2


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    video, audio = _clip(num_frames=8)
    calls = []

    def failing_mux_audio(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(media, "_mux_audio", failing_mux_audio)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_av(tmp_path / "clip.mp4", video, FPS, audio, SR)
    assert os.listdir(tmp_path) == []  # neither the final name nor the temporary one


def test_write_wav(tmp_path):
    _, audio = _clip(seconds=0.5, click_at=0.25)
    path = tmp_path / "a.wav"
    write_wav(path, audio, SR)
    with wave.open(str(path)) as f:
        assert (f.getframerate(), f.getnchannels(), f.getnframes()) == (SR, 1, len(audio))
        pcm = np.frombuffer(f.readframes(len(audio)), "<i2")
    np.testing.assert_allclose(pcm / 32767.0, audio, atol=1e-4)
    with pytest.raises(FileExistsError):
        write_wav(path, audio, SR)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="missing.mp4: no such file"):
        read_all(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(MediaError, match="junk.mp4"):
        read_all(junk)
    video, audio = _clip()
    good = tmp_path / "good.mp4"
    write_av(good, video, FPS, audio, SR)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MediaError, match="cut.mp4"):
        read_all(cut)
