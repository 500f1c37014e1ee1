"""Clips the media tests make: explicit timestamps (variable frame rate), a display matrix, 4K,
a minute long. H.264 at preset ultrafast, so even the 4K and the long clip take a moment."""

from __future__ import annotations

import fractions

import av
import numpy as np

from harmony_jax.media_window import frame_rate, read_window

TIME_BASE = fractions.Fraction(1, 1200)  # exact for 8, 24, 25 and 30 fps steps


def write_clip(
    path,
    frames,
    times,
    *,
    audio=None,
    sample_rate=16000,
    rotation=None,
    hflip=False,
    vflip=False,
    crf="18",
):
    """frames uint8 [F, H, W, 3] (or a callable i -> [H, W, 3], for long or large clips) shown
    at `times` (s, increasing); optional mono audio [S] from t = 0; optional display matrix."""
    count = len(times)
    frame_at = frames if callable(frames) else (lambda i: frames[i])
    first = frame_at(0)
    with av.open(str(path), "w") as container:
        video = container.add_stream(
            "libx264", rate=30, options={"preset": "ultrafast", "crf": crf}
        )
        video.height, video.width = first.shape[:2]
        video.pix_fmt, video.time_base = "yuv420p", TIME_BASE
        video.codec_context.time_base = TIME_BASE
        if rotation is not None or hflip or vflip:
            video.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        done = 0
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(frame_at(i), format="rgb24")
            frame.pts, frame.time_base = round(times[i] / TIME_BASE), TIME_BASE
            container.mux(video.encode(frame))
            if sound is None:
                continue
            upto = (
                len(audio) if i + 1 == count else min(len(audio), round(times[i + 1] * sample_rate))
            )
            if upto > done:
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(audio[None, done:upto], np.float32),
                    format="fltp",
                    layout="mono",
                )
                chunk.sample_rate, chunk.pts = sample_rate, done
                container.mux(sound.encode(chunk))
                done = upto
        container.mux(video.encode(None))
        if sound is not None:
            container.mux(sound.encode(None))


def vfr_times(segments) -> np.ndarray:
    """[(fps, seconds), ...] -> the frame times of those segments back to back."""
    times, t = [], 0.0
    for fps, seconds in segments:
        n = round(fps * seconds)
        times += [t + i / fps for i in range(n)]
        t += n / fps
    return np.asarray(times)


def flash_clip(times, flash_times, sample_rate=16000, size=(32, 32), duration=None):
    """Dark frames, white at each time in `flash_times` (which must be frame times), and a
    click at each flash: in sync by construction. Returns (frames, audio)."""
    frames = np.zeros((len(times), *size, 3), np.uint8)
    for t in flash_times:
        frames[int(np.argmin(np.abs(times - t)))] = 255
    duration = duration if duration is not None else times[-1] + (times[-1] - times[-2])
    audio = np.zeros(int(round(duration * sample_rate)), np.float32)
    for t in flash_times:
        k = int(round(t * sample_rate))
        audio[k : k + 400] = 0.8 * np.sin(np.arange(400) * 2 * np.pi * 1000 / sample_rate)
    return frames, audio


def read_all(path):
    """A whole clip at its own rate: (frames uint8 [F, H, W, 3], average fps, audio [S, C] or
    None, sample rate or None), frames picked by presentation time."""
    window = read_window(path, fps=frame_rate(path))
    return window.video, window.source_fps, window.audio, window.sample_rate
