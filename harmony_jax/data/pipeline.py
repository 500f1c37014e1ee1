"""Grain training pipelines over any clip source: shuffle, repeat, shard, tokenise, batch.

Determinism: the pipeline is a random-access `MapDataset` up to the batch, so the batch at step k
is a pure function of (seed, k): resuming at `start_step` slices the batched dataset, and worker
processes receive whole batches round-robin, so neither restarts nor `num_workers` change what a
step sees. Sharding happens after shuffling and repeating, by rows: the global batch at step k is
elements kB .. kB + B - 1 of one stream, and a process whose devices hold rows [jb, (j + 1)b)
of it (block j of B / b, `parallel.sharding.process_rows`) loads exactly those elements, so the
processes' shards are disjoint and, laid side by side, are the single-process batch row for row
whatever the process count.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from harmony_jax.codecs.base import TextEncoder
from harmony_jax.codecs.text import TranscriptTokenizer
from harmony_jax.errors import ConfigError

SOURCES = ("sounding_shapes", "clip_folder", "latents")
READ_THREADS = 2  # per process: overlap decoding (ffmpeg, numpy: mostly GIL-free) with training


def clip_shape(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """The clip geometry every source reads at, from `config.data`."""
    keys = ("fps", "num_frames", "height", "width", "sample_rate")
    return {k: data[k] for k in keys}


def clip_folder(root: str, data: ml_collections.ConfigDict):
    """The folder of clips `root` read at `config.data`'s geometry (and its skip_bad_files)."""
    from harmony_jax.data.clip_folder import ClipFolder

    return ClipFolder(root, skip_bad_files=data.skip_bad_files, **clip_shape(data))


def make_source(config: ml_collections.ConfigDict):
    """The grain random-access source named by `config.data.source`."""
    d = config.data
    if d.source == "sounding_shapes":
        from harmony_jax.data.sounding_shapes import SoundingShapes

        return SoundingShapes.like(d, num_clips=d.num_clips, seed=config.seed)
    if d.source == "clip_folder":
        if not d.root:
            raise ConfigError("config.data.source='clip_folder' needs config.data.root")
        return clip_folder(d.root, d)
    if d.source == "latents":  # `python -m harmony_jax.encode` output; checked against config
        from harmony_jax.data.latent_records import open_latent_records

        if not d.root:
            raise ConfigError("config.data.source='latents' needs config.data.root")
        return open_latent_records(config)
    raise ConfigError(f"Unknown config.data.source={d.source!r}; valid: {list(SOURCES)}")


@dataclasses.dataclass(frozen=True)
class PrepareExample(grain.transforms.Map):
    """Source item -> training example: arrays only, captions tokenised on host."""

    text_encoder: TextEncoder
    transcript_tokenizer: TranscriptTokenizer

    def map(self, item: dict[str, Any]) -> dict[str, np.ndarray]:
        video_ids, video_mask = self.text_encoder.tokenize([item["video_caption"]])
        audio_ids, audio_mask = self.text_encoder.tokenize([item["audio_caption"]])
        return dict(
            video=np.asarray(item["video"], np.float32),  # [F, H, W, 3]
            audio=np.asarray(item["audio"], np.float32),  # [S]
            video_text_ids=video_ids[0],
            video_text_mask=video_mask[0],  # [L]
            audio_text_ids=audio_ids[0],
            audio_text_mask=audio_mask[0],  # [L]
            transcript_ids=self.transcript_tokenizer([item.get("transcript", "")])[0],  # [Lc]
        )


def _init_worker(worker_index: int, worker_count: int) -> None:
    """Worker processes: absl flags readable (grain reads its own), accelerators untouched."""
    del worker_index, worker_count
    os.environ["JAX_PLATFORMS"] = "cpu"
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_dataset(
    source,
    config: ml_collections.ConfigDict,
    text_encoder: TextEncoder,
    *,
    seed: int,
    start_step: int = 0,
    block: int = 0,
    blocks: int = 1,
    transcript_tokenizer: TranscriptTokenizer | None = None,
) -> grain.IterDataset:
    """Batches of rows block `block` of `blocks` of every global batch of `config.batch_size`
    (this process's share), from step `start_step` on.

    Transcripts become byte ids unless a `transcript_tokenizer` (e.g. F5's vocabulary) is given.
    """
    transcript_tokenizer = transcript_tokenizer or TranscriptTokenizer(
        config.model.transcript.max_len
    )
    if config.batch_size % blocks:
        raise ValueError(
            f"config.batch_size={config.batch_size} is not divisible into "
            f"{blocks} blocks of rows (one per process)"
        )
    if not 0 <= block < blocks:
        raise ValueError(f"block={block} outside [0, {blocks})")
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()  # new order each epoch
    if not getattr(source, "prepared", False):  # latent records come tokenised
        ds = ds.map(PrepareExample(text_encoder, transcript_tokenizer))
    # Lazy: a process reads only the elements of its own blocks.
    ds = ds.batch(config.batch_size // blocks, drop_remainder=True)[block::blocks][start_step:]
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=READ_THREADS)
    )
    if config.data.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain reads absl flags when it starts workers
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=config.data.num_workers),
            worker_init_fn=_init_worker,
        )
    return ds


def make_train_iterator(
    config: ml_collections.ConfigDict,
    text_encoder: TextEncoder,
    *,
    seed: int,
    start_step: int = 0,
    block: int | None = None,
    blocks: int | None = None,
    transcript_tokenizer: TranscriptTokenizer | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite iterator of per-process numpy batches from `make_source(config)`:
    video [b, F, H, W, 3], audio [b, S], {video,audio}_text_{ids,mask} [b, L], transcript_ids
    [b, Lc], with b = config.batch_size / blocks. The block defaults to the process's index
    among JAX's processes (a mesh whose batch axes span them in order)."""
    ds = make_train_dataset(
        make_source(config),
        config,
        text_encoder,
        seed=seed,
        start_step=start_step,
        block=jax.process_index() if block is None else block,
        blocks=jax.process_count() if blocks is None else blocks,
        transcript_tokenizer=transcript_tokenizer,
    )
    return iter(ds)
