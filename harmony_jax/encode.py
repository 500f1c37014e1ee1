"""Encode a clip folder once into latent records, for runs with `config.data.source='latents'`.

    python -m harmony_jax.encode --config configs/harmony_5b.py --src CLIPS --dst LATENTS \
        [--dtype bfloat16|float32] [--batch_per_device 1] [--records_per_shard 64]

The run's configured codecs and text encoder (video VAE posterior mean, audio VAE, a frozen text
encoder's embeddings, or a trainable one's token ids; transcript ids) run jitted over this
process's devices, batch-parallel; with several processes (`jax.distributed`), process p of P
encodes and writes shards p, p + P, ... (`shards_of`), and process 0 writes the manifest once
all have met at a barrier. Record i is item i of the clip folder (`data.skip_bad_files` decides
whether a bad clip stops the encode or is replaced by the next good one, as training from the
folder would). Each shard is written under a temporary name and renamed when complete, so a killed
encode rerun with the same command redoes only unfinished shards and ends byte-identical to an
uninterrupted one; `manifest.json`, written last, marks the directory finished.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from array_record.python.array_record_module import ArrayRecordWriter
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import config_flags
from tqdm import tqdm

from harmony_jax import quiet_logs
from harmony_jax.atomic import atomic_path
from harmony_jax.compile_cache import enable_compile_cache
from harmony_jax.config_check import check_config
from harmony_jax.config_cli import parse_flags
from harmony_jax.data.clip_folder import CAPTIONS_FILE, ClipFolder
from harmony_jax.data.latent_records import (
    DTYPES,
    EMPTY_PROMPT_FILE,
    FORMAT,
    LAYOUT_FILE,
    MANIFEST_FILE,
    LatentRecordsError,
    first_difference,
    identity,
    latent_geometry,
    serialize_record,
    shard_name,
    sources_name,
    weights_digest,
)
from harmony_jax.data.pipeline import clip_folder
from harmony_jax.errors import DataError, UserError, one_line, reported_as_one_line
from harmony_jax.parallel import distributed
from harmony_jax.system import System, build_system

READ_THREADS = 4  # clips decoded ahead of the encoder (ffmpeg and resampling release the GIL)
WRITER_OPTIONS = "group_size:1,uncompressed"  # one record per chunk: fast random access


def _weights(obj: Any) -> Any:
    """The frozen weights a codec or text encoder holds (read now), or None."""
    for name in ("weights", "vae_weights", "params"):
        if name in dir(type(obj)):
            return getattr(obj, name)
    return None


def layout(
    config: ml_collections.ConfigDict,
    system: System,
    folder: ClipFolder,
    dtype: str,
    records_per_shard: int,
) -> dict[str, Any]:
    """What every shard of this encode agrees with, and a rerun must match."""
    text = system.text_encoder
    digests = {}
    for kind, obj in (
        ("video", system.video_codec),
        ("audio", system.audio_codec),
        ("text", None if text.trainable else text),
    ):
        weights = None if obj is None else _weights(obj)
        digests[kind] = None if weights is None else weights_digest(weights)
    with open(os.path.join(folder.root, CAPTIONS_FILE), "rb") as f:
        captions_digest = hashlib.sha256(f.read()).hexdigest()
    n = len(folder)
    return dict(
        format=FORMAT,
        identity=identity(config, system.transcript_tokenizer.vocab),
        weights_sha256=digests,
        dtype=dtype,
        geometry=latent_geometry(system),
        text="ids" if text.trainable else "embeddings",
        skip_bad_files=bool(config.data.skip_bad_files),
        source=os.path.abspath(folder.root),
        captions_sha256=captions_digest,
        num_examples=n,
        records_per_shard=records_per_shard,
        num_shards=-(-n // records_per_shard),
    )


def _check_or_write_layout(dst: str, wanted: dict[str, Any], write: bool) -> None:
    """A layout already in `dst` must be this encode's; else (`write`: process 0) it is written."""
    file = os.path.join(dst, LAYOUT_FILE)
    if os.path.isfile(file):
        with open(file) as f:
            recorded = json.load(f)
        key = first_difference(recorded, wanted)
        if key is not None:
            raise LatentRecordsError(
                f"{file}: an encode with {key}={recorded.get(key)!r} is in this directory, this "
                f"one has {wanted.get(key)!r}; finish it with its settings or use another --dst"
            )
        return
    if write:
        with atomic_path(file, overwrite=True) as tmp, open(tmp, "w") as f:
            json.dump(wanted, f, indent=1)


def _done(dst: str, shard: int, num_shards: int) -> bool:
    return all(
        os.path.isfile(os.path.join(dst, name(shard, num_shards)))
        for name in (shard_name, sources_name)
    )


def _remove_stale_temporaries(dst: str, shards: list[int], num_shards: int) -> None:
    """Temporaries a killed encode left behind for the shards this process will write."""
    for shard in shards:
        for name in (shard_name, sources_name):
            for tmp in glob.glob(os.path.join(dst, f".{name(shard, num_shards)}.*.tmp*")):
                os.unlink(tmp)


class BatchEncoder:
    """One jitted program: a batch of media and token ids -> its records' arrays, batch-sharded
    over this process's devices."""

    def __init__(self, system: System, dtype: str, batch_per_device: int):
        self.system = system
        devices = jax.local_devices()
        self.batch = batch_per_device * len(devices)
        self.sharding = NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))
        out_dtype = np.dtype(dtype)
        embed = not system.text_encoder.trainable

        def encode(batch):
            out = dict(
                video=system.video_codec.encode(batch["video"]),
                audio=system.audio_codec.encode(batch["audio"]),
            )
            if embed:  # a frozen encoder's embeddings: params are the encoder's own
                for kind in ("video", "audio"):
                    out[f"{kind}_text"] = system.embed_text({}, batch[f"{kind}_text_ids"])
            return {k: v.astype(out_dtype) for k, v in out.items()}

        self._encode = jax.jit(encode, out_shardings=self.sharding)

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        """Records of up to `self.batch` items (padded to a full batch: one compile)."""
        padded = items + [items[-1]] * (self.batch - len(items))
        keys = ("video", "audio", "video_text_ids", "audio_text_ids")
        batch = {k: jax.device_put(np.stack([it[k] for it in padded]), self.sharding) for k in keys}
        out = jax.device_get(self._encode(batch))
        records = []
        for row, item in enumerate(items):
            record = dict(
                video=out["video"][row],
                audio=out["audio"][row],
                transcript_ids=item["transcript_ids"],
            )
            for kind in ("video", "audio"):
                mask = item[f"{kind}_text_mask"]
                if f"{kind}_text" in out:  # embeddings of the real tokens only
                    record[f"{kind}_text"] = out[f"{kind}_text"][row][: int(mask.sum())]
                else:
                    record[f"{kind}_text_ids"] = item[f"{kind}_text_ids"]
                    record[f"{kind}_text_mask"] = mask
            records.append(record)
        return records


def load_item(folder: ClipFolder, system: System, index: int) -> dict[str, Any]:
    """Item `index` of the folder, tokenised, with where it came from."""
    used, item = folder.locate(index)
    text = system.text_encoder
    out = dict(
        index=index,
        used=used,
        path=os.path.relpath(folder.clips[used].path, folder.root),
        video=item["video"],
        audio=item["audio"],
        transcript_ids=system.transcript_tokenizer([item["transcript"]])[0],
        source=dict(
            video_caption=item["video_caption"],
            audio_caption=item["audio_caption"],
            transcript=item["transcript"],
        ),
    )
    for kind in ("video", "audio"):
        ids, mask = text.tokenize([item[f"{kind}_caption"]])
        out[f"{kind}_text_ids"], out[f"{kind}_text_mask"] = ids[0], mask[0]
    return out


def _items(folder: ClipFolder, system: System, start: int, stop: int) -> Iterator[dict]:
    ds = grain.MapDataset.range(start, stop).map(lambda i: load_item(folder, system, i))
    return iter(
        ds.to_iter_dataset(
            grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=2 * READ_THREADS)
        )
    )


def _write_shard(
    dst: str, shard: int, num_shards: int, records: list[bytes], sources: dict[str, Any]
) -> None:
    """The sources file, then the shard (each under a temporary name until complete)."""
    with atomic_path(os.path.join(dst, sources_name(shard, num_shards)), overwrite=True) as tmp:
        with open(tmp, "w") as f:
            json.dump(sources, f)
    with atomic_path(os.path.join(dst, shard_name(shard, num_shards)), overwrite=True) as tmp:
        writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
        for record in records:
            writer.write(record)
        writer.close()


def _write_empty_prompt(system: System, dst: str) -> None:
    """A frozen encoder's embedding of "" (real tokens only), for caption dropout."""
    path = os.path.join(dst, EMPTY_PROMPT_FILE)
    if system.text_encoder.trainable or os.path.isfile(path):
        return
    ids, mask = system.text_encoder.tokenize([""])
    embedding = np.asarray(jax.jit(lambda i: system.embed_text({}, i))(ids), np.float32)
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, embedding[0, : int(mask[0].sum())])


def shards_of(process_index: int, process_count: int, num_shards: int) -> list[int]:
    """The shards process `process_index` of `process_count` writes: p, p + P, ... Shard s
    holds records [s k, (s + 1) k) and is named by s alone, so processes never write the same
    file, and a rerun with any process count redoes exactly the shards not yet complete."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process {process_index} outside [0, {process_count})")
    return list(range(process_index, num_shards, process_count))


def _finish(dst: str, plan: dict[str, Any]) -> dict[str, Any]:
    """manifest.json from the layout and every shard's sources (deterministic content); a
    shard some process did not complete is named."""
    n = plan["num_shards"]
    examples, skipped, shards = [], 0, []
    for shard in range(n):
        if not _done(dst, shard, n):
            raise LatentRecordsError(
                f"{os.path.join(dst, shard_name(shard, n))}: not written (did the process that "
                f"encodes shard {shard} stop?); rerun the same encode"
            )
        with open(os.path.join(dst, sources_name(shard, n))) as f:
            sources = json.load(f)
        examples += sources["examples"]
        skipped += len(sources["bad_clips"])
        shards.append(dict(file=shard_name(shard, n), records=len(sources["examples"])))
    manifest = dict(plan, shards=shards, skipped_clips=skipped, examples=examples)
    with atomic_path(os.path.join(dst, MANIFEST_FILE), overwrite=True) as tmp:
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
    return manifest


def _sync_processes(timeout_s: float) -> None:
    """Every JAX process has written its shards: the coordination service's barrier (not a
    device collective, whose first use gives late peers only 30 s; processes with more clips, or
    slower disks, arrive much later)."""
    distributed.barrier("harmony_jax.encode: shards written", timeout_s)


def encode_folder(
    config: ml_collections.ConfigDict,
    src: str,
    dst: str,
    *,
    dtype: str = "bfloat16",
    batch_per_device: int = 1,
    records_per_shard: int = 64,
    progress: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    barrier: Callable[[], None] | None = None,
) -> dict[str, Any] | None:
    """Encodes `src` into `dst` (resuming what is there); returns the manifest once every
    process's shards are done (None on a process other than 0 of several).

    Processes default to JAX's; with several, each writes `shards_of` its index, then all meet
    at `barrier` (default: the coordinator's barrier) and process 0 writes the manifest."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}: expected one of {DTYPES}")
    if records_per_shard < 1 or batch_per_device < 1:
        raise ValueError(
            f"--records_per_shard={records_per_shard} and --batch_per_device="
            f"{batch_per_device} must be >= 1"
        )
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    system = build_system(config)
    folder = clip_folder(src, config.data)
    plan = layout(config, system, folder, dtype, records_per_shard)
    os.makedirs(dst, exist_ok=True)
    _check_or_write_layout(dst, plan, write=index == 0)
    n, k = plan["num_shards"], records_per_shard
    mine = shards_of(index, count, n)
    todo = [s for s in mine if not _done(dst, s, n)]
    _remove_stale_temporaries(dst, todo, n)
    if index == 0:
        _write_empty_prompt(system, dst)
    size = lambda s: min(k, plan["num_examples"] - s * k)
    logging.info(
        "encoding %d clips of %s into %d shards of %s: process %d of %d, %d of its %d shards to do",
        plan["num_examples"],
        src,
        n,
        dst,
        index,
        count,
        len(todo),
        len(mine),
    )
    encoder = BatchEncoder(system, dtype, batch_per_device) if todo else None
    bar = tqdm(
        total=sum(size(s) for s in mine),
        initial=sum(size(s) for s in mine if s not in todo),
        unit="clips",
        desc="encode",
        disable=not progress,
        file=sys.stderr,
    )
    with bar:
        for shard in todo:
            records, examples, bad, pending = [], [], [], []
            for item in _items(folder, system, shard * k, shard * k + size(shard)):
                examples.append(
                    dict(
                        index=item["index"],
                        folder_index=item["used"],
                        path=item["path"],
                        **item["source"],
                    )
                )
                if item["used"] != item["index"]:
                    bad.append(item["index"])
                pending.append(item)
                if len(pending) == encoder.batch:
                    records += [serialize_record(r) for r in encoder(pending)]
                    bar.update(len(pending))
                    pending = []
            if pending:
                records += [serialize_record(r) for r in encoder(pending)]
                bar.update(len(pending))
            _write_shard(dst, shard, n, records, dict(examples=examples, bad_clips=bad))
    if count > 1:
        (barrier or (lambda: _sync_processes(config.distributed.barrier_timeout_s)))()
        if index != 0:
            return None
    return _finish(dst, plan)


# ---- command line


def _define_flags() -> dict[str, flags.FlagHolder]:
    """The CLI's flags; defined only when run as a program (harmony_jax.train owns --config)."""
    return dict(
        config=config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py)."),
        src=flags.DEFINE_string("src", None, "Clip folder (captions.jsonl + media)."),
        dst=flags.DEFINE_string("dst", None, "Latent directory to write (or to resume)."),
        dtype=flags.DEFINE_enum("dtype", "bfloat16", list(DTYPES), "Stored latent dtype."),
        batch_per_device=flags.DEFINE_integer(
            "batch_per_device", 1, "Clips per device per encoder call."
        ),
        records_per_shard=flags.DEFINE_integer(
            "records_per_shard", 64, "Records per ArrayRecord shard."
        ),
    )


@reported_as_one_line  # shards already written stay: a rerun resumes
def main(values: dict[str, Any]) -> None:
    config = values.pop("config")
    check_config(config)
    enable_compile_cache(config.compile_cache_dir)
    distributed.maybe_initialize(config.distributed)
    try:
        manifest = encode_folder(config, **values, progress=jax.process_index() == 0)
    except ValueError as e:  # the clip folder or --dst is at fault (codec errors included)
        if isinstance(e, UserError):
            raise
        raise DataError(one_line(e)) from e
    if manifest is not None:
        logging.info(
            "wrote %s: %d clips (%d bad clips skipped), %s latents",
            os.path.join(values["dst"], MANIFEST_FILE),
            manifest["num_examples"],
            manifest["skipped_clips"],
            manifest["dtype"],
        )


if __name__ == "__main__":
    quiet_logs.install()
    _FLAGS = _define_flags()
    flags.mark_flags_as_required(["config", "src", "dst"])
    app.run(lambda argv: main({k: f.value for k, f in _FLAGS.items()}), flags_parser=parse_flags)
