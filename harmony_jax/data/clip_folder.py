"""A grain random-access source over a folder of .mp4 clips described by `captions.jsonl`.

`captions.jsonl` holds one JSON object per line: `path` (relative to the folder),
`video_caption`, `audio_caption` and optionally `transcript`. Each item is the first `num_frames`
frames of the clip at `fps`, picked by presentation time (variable frame rates are common),
turned upright by the display matrix, centre-cropped and resized to `height` x `width`, with the
mono audio at `sample_rate` that plays over exactly those frames, in the sounding-shapes layout.
Only that window is decoded (`media_window.read_window`), so an item costs the same whatever the
source's length and resolution.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import os
import threading
from typing import Any

import librosa
import numpy as np

from harmony_jax.errors import DataError
from harmony_jax.media import MediaError, unit_range
from harmony_jax.media_window import read_window

CAPTIONS_FILE = "captions.jsonl"


@dataclasses.dataclass(frozen=True)
class Clip:
    path: str  # absolute
    video_caption: str
    audio_caption: str
    transcript: str = ""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object hook: a key given twice is an error, not the last value silently."""
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key {repeated[0]!r} given twice")
    return dict(pairs)


def read_captions(root: str) -> list[Clip]:
    """Parses `root/captions.jsonl` (UTF-8, a byte-order mark allowed); a malformed line or a
    clip listed twice raises DataError naming the file and the line."""
    file = os.path.join(root, CAPTIONS_FILE)
    if not os.path.isfile(file):
        raise DataError(
            f"{file}: no such file (config.data.root={root!r} must hold the clips "
            f"and {CAPTIONS_FILE})"
        )
    clips, first_line = [], {}
    with open(file, "rb") as f:  # decoded line by line: bad UTF-8 is that line's error
        for number, line in enumerate(f, start=1):
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            if not line.strip():
                continue
            try:
                entry = json.loads(line.decode("utf-8"), object_pairs_hook=_unique_keys)
                if not isinstance(entry, dict):
                    raise ValueError("not a JSON object")
                fields = {k: entry[k] for k in ("path", "video_caption", "audio_caption")}
                fields["transcript"] = entry.get("transcript", "")
                if not all(isinstance(v, str) for v in fields.values()):
                    raise ValueError("path, captions and transcript must be strings")
            except (ValueError, KeyError, RecursionError) as e:  # JSON and UTF-8 errors are
                # ValueErrors; RecursionError: nesting too deep for the parser
                raise DataError(f"{file}:{number}: bad line ({type(e).__name__}: {e})") from e
            path = os.path.normpath(os.path.join(root, fields["path"]))
            if path in first_line:
                raise DataError(
                    f"{file}:{number}: clip {fields['path']!r} is already listed on "
                    f"line {first_line[path]}"
                )
            first_line[path] = number
            fields["path"] = os.path.join(root, fields["path"])
            clips.append(Clip(**fields))
    if not clips:
        raise DataError(f"{file}: no clips")
    return clips


def _to_mono(audio: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """float32 [S0, C] at `rate` -> mono float32 [S] at `sample_rate`."""
    mono = audio.mean(axis=1)
    if rate != sample_rate and len(mono):
        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate)
    return mono.astype(np.float32)


class ClipFolder:
    """grain RandomAccessDataSource: index -> dict(video [F, H, W, 3] float32 in [-1, 1],
    audio [S] float32, video_caption, audio_caption, transcript).

    A clip that cannot be used (unreadable, no audio, shorter than num_frames / fps) raises
    MediaError naming the file, or with `skip_bad_files` logs a warning and yields the next good
    clip in index order (wrapping), so an index always maps to the same clip."""

    def __init__(
        self,
        root: str,
        *,
        fps: float,
        num_frames: int,
        height: int,
        width: int,
        sample_rate: int,
        skip_bad_files: bool = False,
    ):
        self.root = root
        self.clips = read_captions(root)
        self.fps, self.num_frames = float(fps), int(num_frames)
        self.height, self.width, self.sample_rate = int(height), int(width), int(sample_rate)
        self.skip_bad_files = skip_bad_files
        self.num_samples = round(self.num_frames * self.sample_rate / self.fps)  # S
        # known-bad index -> the reading thread that found it first: only that one warns (grain
        # reads with several threads, which may decode the same bad clip at once)
        self._bad: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def __repr__(self) -> str:
        return (
            f"ClipFolder({len(self)} clips, {self.num_frames} frames of "
            f"{self.height}x{self.width} at {self.fps:g} fps)"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.locate(index)[1]

    def locate(self, index: int) -> tuple[int, dict[str, Any]]:
        """(index of the clip item `index` holds, the item): `index` itself unless it is bad."""
        for k in range(len(self)):
            i = (index + k) % len(self)
            if i in self._bad:
                continue
            try:
                return i, self.load(i)
            except MediaError as e:
                if not self.skip_bad_files:
                    raise
                if self._bad.setdefault(i, threading.get_ident()) == threading.get_ident():
                    logging.warning("Skipping bad clip %d: %s", i, e)  # once per clip
        raise MediaError(
            f"no usable clip among the {len(self)} in {os.path.join(self.root, CAPTIONS_FILE)}"
        )

    def load(self, index: int) -> dict[str, Any]:
        """Clip `index`, no skipping."""
        clip = self.clips[index]
        window = read_window(
            clip.path, fps=self.fps, num_frames=self.num_frames, size=(self.height, self.width)
        )
        if window.audio is None:
            raise MediaError(f"{clip.path}: no audio stream")
        if len(window.video) < self.num_frames:
            raise MediaError(
                f"{clip.path}: {window.end:.3f} s of video is shorter than "
                f"{self.num_frames} frames at {self.fps:g} fps "
                f"({self.num_frames / self.fps:.3f} s)"
            )
        video, audio, rate = window.video, window.audio, window.sample_rate  # [F, H, W, 3] uint8
        wave = _to_mono(audio, rate, self.sample_rate)  # [S0]
        missing = self.num_samples - len(wave)
        if missing > self.sample_rate / self.fps:  # tolerate one frame of codec padding loss
            raise MediaError(
                f"{clip.path}: {len(wave) / self.sample_rate:.3f} s of audio, "
                f"{self.num_samples / self.sample_rate:.3f} s needed"
            )
        wave = np.pad(wave, (0, max(0, missing)))[: self.num_samples]  # [S]
        return dict(
            video=unit_range(video),
            audio=wave,
            video_caption=clip.video_caption,
            audio_caption=clip.audio_caption,
            transcript=clip.transcript,
        )
