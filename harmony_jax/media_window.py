"""Reading the part of a clip that is used, by presentation time, upright, at the size used.

Real clips have variable frame rates (phones, screen recordings), a display matrix (every
portrait phone clip is stored sideways) and far more pixels and seconds than a training item
uses. `read_window` therefore:
- picks, for output frame i of a window at `fps`, the source frame *shown* at the centre of
  that frame's interval, start + (i + 0.5) / fps: the last frame presented at or before it, by
  its timestamp, never by its index;
- cuts the audio by the same clock (sample 0 at the window's start; the demuxer's start times
  are honoured, so AAC's priming samples are not mistaken for the clip's start);
- applies the display matrix (quarter turns and flips) before the centre crop;
- seeks to the window, stops demuxing after it, and converts each *selected* frame to RGB at the
  output size as it is decoded (one FFmpeg filter graph: crop, scale), so memory depends on the
  window and the output size, not on the source's length or resolution.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterator

import av
import numpy as np

from harmony_jax.media import MediaError, _audio_samples, _place_audio

_EPS = 1e-6  # s: a frame stamped at an output instant is shown at it despite rounding
_SEEK_MARGIN = 0.25  # s decoded before a window's start: the audio decoder's warm-up


@contextlib.contextmanager
def open_video(path: str | os.PathLike) -> Iterator[tuple[av.container.InputContainer, str]]:
    """(the opened container, its path as a str) for a file with a video stream; any FFmpeg
    error while it is open (opening, demuxing, decoding) becomes a MediaError naming the file,
    as does a missing file or a file without video."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            yield container, path
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode: {e}") from e


@dataclasses.dataclass(frozen=True)
class Orientation:
    """The display matrix as an exact transform of the coded image: transpose first, then
    mirror rows (upside down) and / or columns (left-right)."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:  # [h, w, 3] -> upright
        if self.transpose:
            image = image.transpose(1, 0, 2)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    def describe(self) -> str:
        return ", ".join(
            name
            for name, on in (
                ("transposed", self.transpose),
                ("upside down", self.flip_rows),
                ("mirrored", self.flip_cols),
            )
            if on
        )


def orientation(frame: av.VideoFrame) -> Orientation:
    """The frame's display matrix (AV_FRAME_DATA_DISPLAYMATRIX, 16.16 fixed point) as an
    `Orientation`, to the nearest quarter turn.

    FFmpeg maps a coded pixel (column p, row q) to the displayed (p', q') = (a p + c q,
    b p + d q) (plus a shift) with (a, b, c, d) = entries (0, 1, 3, 4) of the matrix."""
    for data in frame.side_data:
        if data.type.name == "DISPLAYMATRIX":
            m = np.frombuffer(memoryview(data), "<i4")
            a, b, c, d = (float(m[i]) for i in (0, 1, 3, 4))
            if abs(a) + abs(d) >= abs(b) + abs(c):  # no transpose: p' = a p, q' = d q
                return Orientation(False, d < 0, a < 0)
            # transposed: displayed column from the coded row (p' = c q), row from column
            return Orientation(True, b < 0, c < 0)
    return Orientation()


@dataclasses.dataclass(frozen=True)
class Window:
    """What `read_window` returns."""

    video: np.ndarray  # uint8 [F, H, W, 3], upright, at the requested size
    audio: np.ndarray | None  # float32 [S, C], sample 0 at the window's start; None: no audio
    sample_rate: int | None
    fps: float  # the output rate the frames were picked at
    source_fps: float  # the stream's average rate (a variable-rate clip has no single one)
    source_size: tuple[int, int]  # (H, W) as displayed, after the display matrix
    orientation: Orientation
    end: float  # s from the clip's start where its video ends (the last frame's end)


def _fit(
    display: tuple[int, int], size: tuple[int, int] | None, max_side: int | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H, W) of the centred crop of the upright frame, (H, W) it is scaled to).

    `size`: the largest centred crop of its aspect ratio, scaled to it. `max_side`: no crop,
    scaled down (never up) so the short side is at most `max_side`. Neither: as it is."""
    h0, w0 = display
    if size is not None:
        height, width = size
        crop = (min(h0, round(w0 * height / width)), min(w0, round(h0 * width / height)))
        return crop, (height, width)
    if max_side is not None and min(h0, w0) > max_side:
        scale = max_side / min(h0, w0)
        return display, (max(1, round(h0 * scale)), max(1, round(w0 * scale)))
    return display, display


class _Converter:
    """A decoded frame -> uint8 [H, W, 3] through one FFmpeg filter graph (crop, bicubic
    scale, RGB), in the coded orientation; the display transform is then applied exactly to the
    small result. Only the output size is ever held in RGB."""

    def __init__(self, frame: av.VideoFrame, size, max_side):
        self.orientation = orientation(frame)
        coded = (frame.height, frame.width)
        self.display = coded[::-1] if self.orientation.transpose else coded
        crop, self.out = _fit(self.display, size, max_side)
        swap = (lambda hw: hw[::-1]) if self.orientation.transpose else (lambda hw: hw)
        (crop_h, crop_w), (out_h, out_w) = swap(crop), swap(self.out)
        top, left = (frame.height - crop_h) // 2, (frame.width - crop_w) // 2
        self.graph = av.filter.Graph()
        chain = [
            self.graph.add_buffer(
                width=frame.width,
                height=frame.height,
                format=frame.format.name,
                time_base=frame.time_base,
            )
        ]
        if (crop_h, crop_w) != coded:
            chain.append(self.graph.add("crop", f"{crop_w}:{crop_h}:{left}:{top}:exact=1"))
        if (out_h, out_w) != (crop_h, crop_w):
            chain.append(
                self.graph.add(
                    "scale", f"{out_w}:{out_h}:flags=bicubic+accurate_rnd+full_chroma_int"
                )
            )
        chain += [self.graph.add("format", "rgb24"), self.graph.add("buffersink")]
        for source, sink in zip(chain, chain[1:]):
            source.link_to(sink)
        self.graph.configure()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        self.graph.push(frame)
        return self.orientation.apply(self.graph.pull().to_ndarray())  # [H, W, 3]


def read_window(
    path: str | os.PathLike,
    *,
    fps: float,
    num_frames: int | None = None,
    start: float = 0.0,
    size: tuple[int, int] | None = None,
    max_side: int | None = None,
    audio: bool = True,
) -> Window:
    """The window [start, start + num_frames / fps) s of a clip (None: to the video's end),
    times counted from the clip's start (its video stream's start time).

    Output frame i is the source frame shown at start + (i + 0.5) / fps; fewer than
    `num_frames` come back when the video ends first (the caller decides whether that is an
    error). `size` = (H, W): rotated upright, centre-cropped to that aspect ratio and scaled to
    it; `max_side`: scaled down to that short side, no crop. With `audio`, the samples that play
    over the window (fewer if the stream ends first). Raises MediaError naming the file if it
    is missing, unreadable or has no video."""
    if start < 0:
        raise ValueError(f"start={start} must be >= 0 (seconds)")
    with open_video(path) as (container, path):
        return _read(container, path, float(fps), num_frames, float(start), size, max_side, audio)


def _read(container, path, fps, num_frames, start, size, max_side, with_audio) -> Window:
    vstream = container.streams.video[0]
    astream = container.streams.audio[0] if with_audio and container.streams.audio else None
    origin = (
        float(vstream.start_time * vstream.time_base) if vstream.start_time is not None else 0.0
    )
    t0 = origin + start  # the window's start on the stream clock
    end = math.inf if num_frames is None else t0 + num_frames / fps
    last_instant = math.inf if num_frames is None else t0 + (num_frames - 0.5) / fps
    if start > 0:
        container.seek(
            max(0, int((t0 - _SEEK_MARGIN) / vstream.time_base)), stream=vstream, backward=True
        )
    convert, shown, shown_image, shown_end = None, None, None, origin
    frames: list[np.ndarray] = []
    chunks: list[tuple[float, np.ndarray]] = []
    video_done, audio_done, decoded = False, astream is None, 0

    def take_until(time: float) -> None:
        """Outputs every instant before `time` (the next frame's timestamp): `shown` is the
        frame on screen then; each such frame is converted once."""
        nonlocal shown_image
        while len(frames) < (num_frames or math.inf):
            instant = t0 + (len(frames) + 0.5) / fps
            if instant >= time - _EPS:
                return
            if shown_image is None:
                shown_image = convert(shown)
            frames.append(shown_image)

    streams = [s for s in (vstream, astream) if s is not None]
    for packet in container.demux(*streams):
        if packet.stream is vstream and not video_done:
            for frame in packet.decode():
                if frame.time is None:
                    continue
                decoded += 1
                convert = convert or _Converter(frame, size, max_side)
                if shown is not None:  # (the first frame also stands for any instant before it)
                    take_until(frame.time)
                shown, shown_image = frame, None
                duration = (
                    frame.duration * frame.time_base
                    if frame.duration
                    else 1.0 / float(vstream.average_rate or vstream.guessed_rate or fps)
                )
                shown_end = frame.time + float(duration)
                if frame.time > last_instant + _EPS or len(frames) == num_frames:
                    video_done = True
                    break
        elif packet.stream is astream and not audio_done:
            audio_done = _collect_audio(packet, chunks, t0, end)
        if video_done and audio_done:
            break
    if convert is None:
        raise MediaError(f"{path}: no decodable video frames (corrupt or truncated)")
    if shown is not None and len(frames) < (num_frames or math.inf):
        take_until(shown_end)  # the last frame stays on screen for its duration
    if num_frames is None and start == 0 and vstream.frames and decoded < vstream.frames:
        raise MediaError(f"{path}: truncated: decoded {decoded} of {vstream.frames} video frames")
    if convert.orientation != Orientation():
        logging.info(
            "%s: display matrix applied (%s) before cropping", path, convert.orientation.describe()
        )
    rate, wave = (None, None) if astream is None else _window_audio(astream, chunks, t0, end)
    video = np.stack(frames) if frames else np.zeros((0, *convert.out, 3), np.uint8)
    return Window(
        video=video,
        audio=wave,
        sample_rate=rate,
        fps=fps,
        source_fps=float(vstream.average_rate or vstream.guessed_rate or 0.0),
        source_size=convert.display,
        orientation=convert.orientation,
        end=shown_end - origin,
    )


def _collect_audio(packet, chunks: list, t0: float, end: float) -> bool:
    """Decodes an audio packet, keeping the chunks (start time, [n, C]) that overlap [t0, end);
    True once a chunk starts at or after `end`."""
    for frame in packet.decode():
        begin = (
            frame.time
            if frame.pts is not None
            else (chunks[-1][0] + len(chunks[-1][1]) / frame.sample_rate if chunks else t0)
        )
        if begin >= end:
            return True
        samples = _audio_samples(frame)
        if begin + len(samples) / frame.sample_rate > t0:
            chunks.append((begin, samples))
    return False


def _window_audio(stream, chunks: list, t0: float, end: float) -> tuple[int, np.ndarray]:
    """(rate, float32 [S, C]): sample 0 at t0, cut at `end` or the stream's declared end
    (which trims AAC's tail padding), whichever comes first."""
    rate = int(stream.rate)
    if not chunks:
        return rate, np.zeros((0, stream.channels), np.float32)
    if stream.duration is not None:
        end = min(end, float((stream.duration + (stream.start_time or 0)) * stream.time_base))
    return rate, _place_audio(chunks, t0, None if math.isinf(end) else end, rate)


def read_soundtrack(
    path: str | os.PathLike, seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """A video's audio (float32 [S, C], sample rate) from its first frame's time for `seconds`
    (None: to the end), without decoding a single video frame."""
    path = os.fspath(path)
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream")
            astream = container.streams.audio[0]
            vstream = container.streams.video[0] if container.streams.video else astream
            t0 = float((vstream.start_time or 0) * vstream.time_base)
            end = math.inf if seconds is None else t0 + seconds
            chunks: list = []
            for packet in container.demux(astream):
                if _collect_audio(packet, chunks, t0, end):
                    break
            return _window_audio(astream, chunks, t0, end)[::-1]
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode: {e}") from e


def frame_rate(path: str | os.PathLike) -> float:
    """The clip's fastest sustained frame rate, from its packets' timestamps (no decoding):
    1 / the median gap between consecutive frames. For a constant-rate clip that is its rate;
    for a variable-rate one, the rate at which none of its common frames is lost."""
    with open_video(path) as (container, path):
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
        base = float(stream.average_rate or stream.guessed_rate or 0.0)
        time_base = stream.time_base
    gaps = np.diff(pts)
    gaps = gaps[gaps > 0]
    if len(gaps) == 0:
        if not base:
            raise MediaError(f"{path}: unknown frame rate")
        return base
    return float(1.0 / (np.median(gaps) * time_base))
