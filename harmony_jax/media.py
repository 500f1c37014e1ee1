"""Writing sounding video (.mp4: H.264 + AAC) and .wav files with PyAV / `wave`, and the audio
decoding helpers `media_window` reads with.

Writes are atomic (a temporary name in the target directory, then `os.replace`), so a crash never
leaves a half-written file under the final name, and refuse to overwrite unless asked. Reading
(`media_window.read_window`) puts audio sample 0 at the time of the first video frame: the
demuxer's start times and frame timestamps are honoured and the AAC encoder's priming and tail
padding are trimmed, so A/V sync survives a write/read round trip.
"""

from __future__ import annotations

import fractions
import os
import wave

import av
import numpy as np

from harmony_jax.atomic import atomic_path
from harmony_jax.errors import UserError

_X264_OPTIONS = {"crf": "18", "preset": "medium"}
_LAYOUTS = {1: "mono", 2: "stereo"}
_INT_SCALE = {"u8": 128.0, "s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


class MediaError(UserError):
    """A media file is missing, corrupt, truncated or lacks what the caller needs."""


def unit_range(frames: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1], the range the codecs and the model work in."""
    return frames.astype(np.float32) / 127.5 - 1.0


def uint8_range(video: np.ndarray) -> np.ndarray:
    """float pixels in [-1, 1] (clipped) -> uint8, the inverse of `unit_range`."""
    return np.round((np.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _to_uint8_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be [F, H, W, 3], got {video.shape}")
    if video.dtype != np.uint8:  # float in [-1, 1]
        video = uint8_range(video)
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2  # yuv420p needs even sizes
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return video  # [F, H', W', 3]


def _to_channels_first(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.ndim != 2 or audio.shape[1] not in _LAYOUTS:
        raise ValueError(
            f"audio must be [S] or [S, C] with C in {sorted(_LAYOUTS)}, got {audio.shape}"
        )
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0).T)  # [C, S]


def _mux_audio(container, stream, audio: np.ndarray, start: int, stop: int) -> None:
    """Encodes and muxes audio[:, start:stop] ([C, S] float32), timestamped by sample index."""
    if stop <= start:
        return
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(audio[:, start:stop]), format="fltp", layout=stream.layout.name
    )
    frame.sample_rate, frame.pts = stream.rate, start
    container.mux(stream.encode(frame))


def write_av(
    path: str | os.PathLike,
    video: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    *,
    overwrite: bool = False,
) -> None:
    """Writes video [F, H, W, 3] (uint8, or float in [-1, 1]) at `fps` and optional audio [S] or
    [S, C] (float in [-1, 1]) at `sample_rate` to an .mp4 (H.264 yuv420p + AAC). Odd frame
    sizes are padded by one edge row / column. Both streams start at t = 0."""
    frames = _to_uint8_video(video)
    samples = None if audio is None else _to_channels_first(audio)
    rate = fractions.Fraction(fps).limit_denominator(100_000)
    # Movie timescale = sample rate: the edit list that trims the AAC padding is then exact to
    # the sample (the default, 1 ms, cuts up to 1 ms of audio).
    options = {"movie_timescale": str(int(sample_rate))} if samples is not None else {}
    with (
        atomic_path(path, overwrite) as tmp,
        av.open(tmp, "w", container_options=options) as container,
    ):
        vstream = container.add_stream("libx264", rate=rate, options=_X264_OPTIONS)
        vstream.height, vstream.width = frames.shape[1:3]
        vstream.pix_fmt = "yuv420p"
        astream = None
        if samples is not None:
            astream = container.add_stream(
                "aac", rate=int(sample_rate), layout=_LAYOUTS[samples.shape[0]]
            )
        done = 0  # audio samples encoded so far: interleave by time, one video frame at a time
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
            if astream is not None:
                upto = min(samples.shape[1], round((i + 1) / fps * sample_rate))
                _mux_audio(container, astream, samples, done, upto)
                done = max(done, upto)
        container.mux(vstream.encode(None))
        if astream is not None:
            _mux_audio(container, astream, samples, done, samples.shape[1])
            container.mux(astream.encode(None))


def write_wav(
    path: str | os.PathLike, audio: np.ndarray, sample_rate: int, *, overwrite: bool = False
) -> None:
    """Writes audio [S] or [S, C] (float in [-1, 1]) as 16-bit PCM .wav."""
    samples = _to_channels_first(audio)  # [C, S]
    # s16 readers (ffmpeg, read_window) divide by 32768: scale the same way so a read-write round
    # trip is bit-exact.
    pcm = np.clip(np.round(samples.T * 32768.0), -32768, 32767).astype("<i2")  # [S, C]
    with atomic_path(path, overwrite) as tmp, wave.open(tmp, "wb") as f:
        f.setnchannels(pcm.shape[1])
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())


def _audio_samples(frame: av.AudioFrame) -> np.ndarray:
    """A decoded audio frame as float32 [n, C]."""
    x = frame.to_ndarray()
    channels = len(frame.layout.channels)
    x = x.T if frame.format.is_planar else x.reshape(-1, channels)  # [n, C]
    kind = frame.format.name.rstrip("p")
    if kind in _INT_SCALE:
        x = (x.astype(np.float64) - (128.0 if kind == "u8" else 0.0)) / _INT_SCALE[kind]
    return x.astype(np.float32)


def _place_audio(
    chunks: list[tuple[float, np.ndarray]], t0: float, end: float | None, sample_rate: int
) -> np.ndarray:
    """Concatenates decoded chunks [n, C] so that sample 0 is at time t0 (zeros before the first
    chunk, samples before t0 dropped) and cuts at time `end` (the stream's declared end)."""
    audio = np.concatenate([x for _, x in chunks])  # [S, C]
    offset = round((chunks[0][0] - t0) * sample_rate)
    if offset >= 0:
        audio = np.concatenate([np.zeros((offset, audio.shape[1]), np.float32), audio])
    else:
        audio = audio[-offset:]
    if end is not None:
        audio = audio[: max(0, round((end - t0) * sample_rate))]
    return audio
