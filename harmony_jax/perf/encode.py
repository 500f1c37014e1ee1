"""What `bench/encode.py` measures: the two stages of a run from latent records.

Encode: clips/s of reading a clip folder (decode, resize, resample, tokenise), of the jitted
codecs alone once compiled, and of `encode_folder` end to end (one compile, records written).
Train: the step fed latent records against the same step fed media (the codec encoders inside
it), timed in turn in one run, as a ratio.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

import jax
import ml_collections

from harmony_jax import plan
from harmony_jax.data.clip_folder import CAPTIONS_FILE
from harmony_jax.data.pipeline import clip_folder
from harmony_jax.data.sounding_shapes import SoundingShapes
from harmony_jax.encode import BatchEncoder, encode_folder, load_item
from harmony_jax.media import write_av
from harmony_jax.perf.measure import format_table, interleaved_medians, median_seconds
from harmony_jax.perf.train_step import compiled_step
from harmony_jax.system import build_system

ENCODE_HEADERS = ("encode stage", "clips", "seconds", "clips/s")
STEP_HEADERS = ("train step fed", "step ms", "compile s", "step / latent step")


def write_clip_folder(config: ml_collections.ConfigDict, root: str, num_clips: int) -> str:
    """`num_clips` sounding-shapes clips at `config.data`'s geometry as a clip folder (mp4 files
    and captions.jsonl): real files for the encoder to decode."""
    d = config.data
    shapes = SoundingShapes.like(d, num_clips=num_clips, seed=config.seed)
    os.makedirs(root, exist_ok=True)
    lines = []
    for i in range(num_clips):
        item = shapes[i]
        write_av(
            os.path.join(root, f"clip{i:05d}.mp4"),
            item["video"],
            d.fps,
            item["audio"],
            d.sample_rate,
            overwrite=True,
        )
        lines.append(
            json.dumps(
                dict(
                    path=f"clip{i:05d}.mp4",
                    video_caption=item["video_caption"],
                    audio_caption=item["audio_caption"],
                    transcript="",
                )
            )
        )
    with open(os.path.join(root, CAPTIONS_FILE), "w") as f:
        f.write("\n".join(lines) + "\n")
    return root


@dataclasses.dataclass(frozen=True)
class EncodeRow:
    stage: str
    clips: int
    seconds: float

    def cells(self) -> tuple:
        return self.stage, self.clips, self.seconds, self.clips / self.seconds


def measure_encode(
    config: ml_collections.ConfigDict,
    src: str,
    dst: str,
    *,
    batch_per_device: int = 1,
    runs: int = 3,
) -> list[EncodeRow]:
    """Rows: reading the folder; the compiled codecs on one batch (median of `runs`); and
    `encode_folder(src, dst)` end to end (bfloat16 records, one compile)."""
    system = build_system(config)
    folder = clip_folder(src, config.data)
    start = time.perf_counter()
    items = [load_item(folder, system, i) for i in range(len(folder))]
    read = time.perf_counter() - start
    encoder = BatchEncoder(system, "bfloat16", batch_per_device)
    batch = (items * encoder.batch)[: encoder.batch]
    codecs = median_seconds(lambda: encoder(batch), runs, warmup=1)
    start = time.perf_counter()
    manifest = encode_folder(config, src, dst, batch_per_device=batch_per_device, progress=False)
    end_to_end = time.perf_counter() - start
    return [
        EncodeRow("read + decode + tokenise (clip folder, 1 thread)", len(items), read),
        EncodeRow(f"codecs, jitted and compiled (batch of {encoder.batch})", encoder.batch, codecs),
        EncodeRow(
            "encode_folder end to end (compile, read, encode, write)",
            manifest["num_examples"],
            end_to_end,
        ),
    ]


@dataclasses.dataclass(frozen=True)
class StepRow:
    inputs: str
    step_seconds: float
    compile_seconds: float


def measure_steps(
    config: ml_collections.ConfigDict,
    *,
    steps: int = 5,
    warmup: int = 1,
    num_devices: int | None = None,
) -> list[StepRow]:
    """The train step of a run from latent records and of the same run from media (the codec
    encoders inside the step), each assembled as `perf.train_step` assembles a row, timed in
    turn step after step (so a shared machine's load falls on both alike)."""
    steps_of, compile_seconds = {}, {}
    for inputs in ("latents", "media"):
        steps_of[inputs], compile_seconds[inputs], _ = compiled_step(
            plan.plan_system(config, inputs), config, num_devices=num_devices
        )
    seconds = interleaved_medians(steps_of, steps, warmup)
    return [StepRow(inputs, seconds[inputs], compile_seconds[inputs]) for inputs in steps_of]


def encode_table(rows: Sequence[EncodeRow]) -> str:
    return format_table(ENCODE_HEADERS, [row.cells() for row in rows])


def step_table(rows: Sequence[StepRow]) -> str:
    latent = next(r.step_seconds for r in rows if r.inputs == "latents")
    return format_table(
        STEP_HEADERS,
        [
            (r.inputs, 1e3 * r.step_seconds, r.compile_seconds, r.step_seconds / latent)
            for r in rows
        ],
    )


def describe(config: ml_collections.ConfigDict) -> str:
    d, k = config.data, config.codecs
    return (
        f"codecs video={k.video.name} audio={k.audio.name} text={k.text.name}; clips of "
        f"{d.num_frames} frames at {d.height}x{d.width}, {d.num_frames / d.fps:g} s at "
        f"{d.sample_rate} Hz; global batch {config.batch_size}; backend "
        f"{jax.default_backend()}, {jax.device_count()} device(s)"
    )
