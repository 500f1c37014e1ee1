"""Latent records: a clip folder encoded once (`python -m harmony_jax.encode`), read by training.

Layout of a latent directory:

    encode.json                        what an encode writes first and every rerun must match:
                                       codec identity (config keys + weight digests), latent
                                       geometry and dtype, example count, shard size
    latents-SSSSS-of-NNNNN.array_record  records [S k, (S + 1) k) (k = records_per_shard), one
                                       msgpack dict each (`serialize_record`)
    latents-SSSSS-of-NNNNN.json        those records' sources: folder index used, path,
                                       captions, and the shard's bad clips
    empty_prompt.npy                   a frozen text encoder's embedding of "" (caption dropout)
    manifest.json                      encode.json + per-example sources + skipped-clip count,
                                       written last: a directory without it is not finished

Record i is item i of the `ClipFolder` (a bad clip, under `data.skip_bad_files`, holds the next
good one, as the folder yields it), so `LatentRecords` drops into the same shuffle, sharding and
batching as the folder and a run from latents sees the same batches as a run from media.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader
from flax import serialization

from harmony_jax.codecs.precomputed import pad_tokens
from harmony_jax.errors import DataError
from harmony_jax.system import build_system

FORMAT = "harmony_jax.latents/1"
LAYOUT_FILE = "encode.json"
MANIFEST_FILE = "manifest.json"
EMPTY_PROMPT_FILE = "empty_prompt.npy"
DTYPES = ("bfloat16", "float32")

# The config keys each codec's records depend on (the decoders' settings and the weight paths,
# which may differ between the encoding and the training machines, are not among them: the
# weights are identified by their digest).
_CODEC_KEYS = {
    ("video", "pixel"): (),
    ("video", "wan2.2"): (),
    ("audio", "mel"): ("n_mels", "n_fft", "hop_length"),
    ("audio", "mmaudio"): ("variant",),
    ("text", "demo"): ("max_len", "vocab_size"),
    ("text", "umt5"): ("max_len",),
}
_DATA_KEYS = ("fps", "num_frames", "height", "width", "sample_rate")


class LatentRecordsError(DataError):
    """A latent directory that cannot feed this run: missing, unfinished, corrupt or foreign."""


def shard_name(shard: int, num_shards: int) -> str:
    return f"latents-{shard:05d}-of-{num_shards:05d}.array_record"


def sources_name(shard: int, num_shards: int) -> str:
    return f"latents-{shard:05d}-of-{num_shards:05d}.json"


def identity(config: ml_collections.ConfigDict, transcript_vocab: Any = None) -> dict[str, Any]:
    """Dotted config key -> value for every key the records depend on."""
    out = {f"data.{k}": config.data[k] for k in _DATA_KEYS}
    for kind in ("video", "audio", "text"):
        section = config.codecs[kind]
        keys = _CODEC_KEYS.get(
            (kind, section.name), tuple(k for k in section if k not in ("name", "path"))
        )
        out[f"codecs.{kind}.name"] = section.name
        out.update({f"codecs.{kind}.{k}": section[k] for k in keys})
    out["model.transcript.max_len"] = config.model.transcript.max_len
    vocab = (
        "utf-8 bytes"
        if transcript_vocab is None
        else hashlib.sha256(json.dumps(sorted(transcript_vocab.items())).encode()).hexdigest()
    )
    out["transcript vocabulary"] = vocab  # from config.init.transcript_from
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def latent_geometry(system) -> dict[str, list[int]]:
    """Shapes of one record's latents under `system`'s codecs."""
    return dict(video=list(system.video_latent_shape), audio=list(system.audio_latent_shape))


def weights_digest(tree: Any) -> str:
    """sha256 of a weight tree: every leaf's path, dtype, shape and bytes, in path order."""
    digest = hashlib.sha256()
    for path, leaf in sorted(
        jax.tree_util.tree_flatten_with_path(tree)[0], key=lambda x: jax.tree_util.keystr(x[0])
    ):
        leaf = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def serialize_record(record: dict[str, np.ndarray]) -> bytes:
    return serialization.msgpack_serialize({k: np.asarray(v) for k, v in record.items()})


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise LatentRecordsError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def first_difference(recorded: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first key on which two identities differ, or None."""
    return next(
        (k for k in sorted(set(recorded) | set(wanted)) if recorded.get(k) != wanted.get(k)), None
    )


def check_identity(file: str, recorded: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Raises LatentRecordsError naming the first key that differs and both values; a codec
    name that differs says the directory was encoded by another codec."""
    for kind in ("video", "audio", "text"):
        key = f"codecs.{kind}.name"
        if recorded.get(key) != wanted.get(key):
            raise LatentRecordsError(
                f"{file}: encoded by {kind} codec {recorded.get(key)!r}, this run's "
                f"config.{key} is {wanted.get(key)!r}"
            )
    key = first_difference(recorded, wanted)
    if key is not None:
        where = key if " " in key else f"config.{key}"
        raise LatentRecordsError(
            f"{file}: encoded with {key}={recorded.get(key)!r}, this "
            f"run's {where} is {wanted.get(key)!r}"
        )


class LatentRecords:
    """grain RandomAccessDataSource over a finished latent directory: index -> a training
    example (video [Tv, h, w, Cv] and audio [Ta, Ca] latents in the stored dtype, text ids and
    masks or embeddings [L, Dt] with masks, transcript ids), already in `PrepareExample`'s
    layout (`prepared`), so the pipeline batches it as is.

    Opening checks the manifest against the run's config and every shard's record count, so a
    truncated shard or a foreign directory is refused before anything compiles."""

    prepared = True

    def __init__(
        self,
        root: str,
        config: ml_collections.ConfigDict,
        geometry: dict[str, list[int]],
        transcript_vocab: Any = None,
    ):
        self.root = root
        file = os.path.join(root, MANIFEST_FILE)
        if not os.path.isfile(file):
            unfinished = os.path.isfile(os.path.join(root, LAYOUT_FILE))
            raise LatentRecordsError(
                f"{file}: no manifest (config.data.root={root!r}); "
                + (
                    "the encode there did not finish: rerun `python -m harmony_jax.encode` with "
                    "the same --dst"
                    if unfinished
                    else "encode the clip folder first with `python -m harmony_jax.encode`"
                )
            )
        self.manifest = manifest = _read_json(file)
        if manifest.get("format") != FORMAT:
            raise LatentRecordsError(
                f"{file}: format {manifest.get('format')!r}, expected {FORMAT!r}"
            )
        check_identity(file, manifest["identity"], identity(config, transcript_vocab))
        if manifest["geometry"] != geometry:
            raise LatentRecordsError(
                f"{file}: latent geometry {manifest['geometry']} there, "
                f"the configured codecs make {geometry}"
            )
        self.text_embedded = manifest["text"] == "embeddings"
        self.text_len = int(config.codecs.text.max_len)
        self.files = [os.path.join(root, s["file"]) for s in manifest["shards"]]
        for path, shard in zip(self.files, manifest["shards"]):
            count = _record_count(path)
            if count != shard["records"]:
                raise LatentRecordsError(
                    f"{path}: {count} records, the manifest lists "
                    f"{shard['records']} (truncated or replaced shard)"
                )
        self._per_shard = int(manifest["records_per_shard"])
        self._source = grain.sources.ArrayRecordDataSource(self.files)

    def __len__(self) -> int:
        return int(self.manifest["num_examples"])

    def __repr__(self) -> str:
        return f"LatentRecords({len(self)} clips in {self.root}, {self.manifest['dtype']})"

    @property
    def examples(self) -> list[dict[str, Any]]:
        """Per record: the folder index and path it came from, its captions and transcript."""
        return self.manifest["examples"]

    def empty_prompt(self) -> np.ndarray | None:
        """A frozen text encoder's embedding of "" [n, Dt] float32; None for ids."""
        if not self.text_embedded:
            return None
        path = os.path.join(self.root, EMPTY_PROMPT_FILE)
        try:
            return np.load(path)
        except (OSError, ValueError) as e:
            raise LatentRecordsError(f"{path}: unreadable ({e})") from None

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        file = self.files[index // self._per_shard]
        try:
            record = serialization.msgpack_restore(self._source[index])
        except Exception as e:
            raise LatentRecordsError(
                f"{file}: record {index} is corrupt ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        example = dict(
            video=record["video"], audio=record["audio"], transcript_ids=record["transcript_ids"]
        )
        for kind in ("video", "audio"):
            if self.text_embedded:
                ids, mask = pad_tokens(record[f"{kind}_text"][None], self.text_len)
                ids, mask = ids[0], mask[0]
            else:
                ids, mask = record[f"{kind}_text_ids"], record[f"{kind}_text_mask"]
            example[f"{kind}_text_ids"], example[f"{kind}_text_mask"] = ids, mask
        return example


def _record_count(path: str) -> int:
    if not os.path.isfile(path):
        raise LatentRecordsError(f"{path}: missing shard listed in the manifest")
    try:
        reader = ArrayRecordReader(path)
        try:
            return reader.num_records()
        finally:
            reader.close()
    except RuntimeError as e:
        raise LatentRecordsError(
            f"{path}: unreadable shard ({str(e)[:200] or 'truncated'})"
        ) from None


def open_latent_records(config: ml_collections.ConfigDict) -> LatentRecords:
    """The latent records at `config.data.root`, checked against the codecs `config` builds
    (building them reads no weights)."""
    system = build_system(config)
    return LatentRecords(
        config.data.root, config, latent_geometry(system), system.transcript_tokenizer.vocab
    )


def unloaded_message(config: ml_collections.ConfigDict) -> str:
    """What a run from latent records does not load, for the log."""
    k = config.codecs
    parts = [f"the video encoder ({k.video.name!r})", f"the audio encoder ({k.audio.name!r})"]
    text = build_system(config).text_encoder
    if not text.trainable:
        parts.append(f"the text encoder ({k.text.name!r})")
    trained = (
        f"; the {k.text.name!r} text encoder is trained on the stored token ids"
        if text.trainable
        else ""
    )
    return (
        f"training from latent records in {config.data.root}: not loaded: "
        f"{', '.join(parts)} (decoders load only if samples are written){trained}"
    )


def sample_items(
    records: LatentRecords, count: int, video_codec: Any, frames: bool
) -> list[dict[str, Any]]:
    """The first `count` records as sampling prompts: captions and transcript from the manifest,
    and (`frames`) the first frame, decoded from the first video latent (a reference image)."""
    items = []
    for i in range(count):
        ex = records.examples[i]
        item = {k: ex[k] for k in ("video_caption", "audio_caption", "transcript")}
        if frames:
            first = np.asarray(records[i]["video"][None, :1], np.float32)
            item["video"] = video_codec.decode(first)[0]  # [1, H, W, 3]
        items.append(item)
    return items
