"""Two-stage training: `harmony_jax.encode` writes latent records of a clip folder, and a run with
`data.source='latents'` trains exactly as the same run from the folder. Resume after SIGKILL,
bad clips, and every refusal."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from harmony_jax.codecs.precomputed import PrecomputedText, pad_tokens
from harmony_jax.data.latent_records import MANIFEST_FILE, LatentRecordsError, shard_name
from harmony_jax.data.pipeline import make_source
from harmony_jax.encode import encode_folder, shards_of
from harmony_jax.media import MediaError, write_av
from harmony_jax.parallel.local_cluster import LocalCluster
from harmony_jax.training import loop
from harmony_jax.training.progress import Progress

ROOT = os.path.join(os.path.dirname(__file__), "..")
NUM_CLIPS, PER_SHARD = 8, 2
STEPS = 2


def _config(**data):
    config = tiny.get_config()
    config.data.update(data)
    return config


def _make_clip(path, seed, num_frames=8, fps=4.0, rate=16000):
    """A moving bright square over noise and a tone whose pitch depends on `seed`."""
    rng = np.random.default_rng(seed)
    video = rng.uniform(-1, 0, (num_frames, 16, 16, 3)).astype(np.float32)
    for i in range(num_frames):
        video[i, 4:10, i : i + 6] = 0.9
    t = np.arange(int(num_frames / fps * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t)).astype(np.float32)[:, None]
    write_av(str(path), video, fps, wave, rate)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    lines = []
    for i in range(NUM_CLIPS):
        _make_clip(root / f"c{i}.mp4", i)
        lines.append(
            dict(
                path=f"c{i}.mp4",
                video_caption=f"a square number {i}",
                audio_caption=f"a tone of {200 + 50 * i} hertz",
                transcript="hi" if i % 2 else "",
            )
        )
    (root / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


@pytest.fixture(scope="module")
def encoded(clips, tmp_path_factory):
    dst = tmp_path_factory.mktemp("latents")
    manifest = encode_folder(
        _config(),
        str(clips),
        str(dst),
        dtype="float32",
        records_per_shard=PER_SHARD,
        progress=False,
    )
    return dst, manifest


def test_manifest_and_records(encoded, clips):
    dst, manifest = encoded
    assert manifest["num_examples"] == NUM_CLIPS and manifest["skipped_clips"] == 0
    assert manifest["dtype"] == "float32" and manifest["text"] == "ids"
    assert manifest["geometry"] == dict(video=[8, 16, 16, 3], audio=[125, 16])
    assert [e["path"] for e in manifest["examples"]] == [f"c{i}.mp4" for i in range(NUM_CLIPS)]
    assert manifest["identity"]["codecs.audio.name"] == "mel"
    assert len(manifest["shards"]) == NUM_CLIPS // PER_SHARD
    records = make_source(_config(source="latents", root=str(dst)))
    folder = make_source(_config(source="clip_folder", root=str(clips)))
    assert len(records) == len(folder) == NUM_CLIPS
    item = records[5]
    np.testing.assert_array_equal(item["video"], folder[5]["video"])  # the pixel codec
    assert item["audio"].shape == (125, 16) and item["transcript_ids"][:2].tolist() == [105, 106]
    assert item["video_text_mask"].sum() == 4  # "a square number" + end token


def test_bfloat16_is_the_default_and_halves_the_bytes(clips, tmp_path):
    manifest = encode_folder(
        _config(), str(clips), str(tmp_path), records_per_shard=NUM_CLIPS, progress=False
    )
    assert manifest["dtype"] == "bfloat16"
    item = make_source(_config(source="latents", root=str(tmp_path)))[0]
    assert item["video"].dtype.name == "bfloat16"


def _losses_and_state(config, workdir, monkeypatch):
    losses = []
    monkeypatch.setattr(Progress, "log", lambda self, step, metrics: losses.append(metrics["loss"]))
    state = loop.train(config, str(workdir))
    return losses, state


@pytest.mark.slow
def test_training_from_latents_equals_training_from_the_folder(
    encoded, clips, tmp_path, monkeypatch
):
    """Same batches, same reference-voice crops (cut from the latents), same caption dropout:
    the losses of every step and the final parameters agree."""
    dst, _ = encoded
    media = _config(source="clip_folder", root=str(clips), ref_audio_seconds=0.5)
    latents = _config(source="latents", root=str(dst), ref_audio_seconds=0.5)
    for config in (media, latents):
        config.update(total_steps=STEPS, checkpoint_every=100)
    loss_m, state_m = _losses_and_state(media, tmp_path / "media", monkeypatch)
    loss_l, state_l = _losses_and_state(latents, tmp_path / "latents", monkeypatch)
    assert len(loss_m) == len(loss_l) == STEPS
    np.testing.assert_allclose(loss_l, loss_m, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state_m.params), jax.tree.leaves(state_l.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def _files(root):
    return {name: (root / name).read_bytes() for name in sorted(os.listdir(root))}


def _encode_command(src, dst) -> tuple[list[str], dict[str, str]]:
    """`python -m harmony_jax.encode` of `src` into `dst` as the `encoded` fixture encodes."""
    return (
        [
            sys.executable,
            "-m",
            "harmony_jax.encode",
            f"--config={ROOT}/configs/tiny.py",
            f"--src={src}",
            f"--dst={dst}",
            "--dtype=float32",
            f"--records_per_shard={PER_SHARD}",
        ],
        dict(os.environ, PYTHONPATH=os.path.abspath(ROOT)),
    )


@pytest.mark.slow
def test_sigkill_during_encode_then_rerun_is_byte_identical(encoded, clips, tmp_path):
    dst, _ = encoded
    resumed = tmp_path / "resumed"
    cmd, env = _encode_command(clips, resumed)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = resumed / shard_name(0, NUM_CLIPS // PER_SHARD)
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (resumed / MANIFEST_FILE).exists(), "killed too late"
    encode_folder(
        _config(),
        str(clips),
        str(resumed),
        dtype="float32",
        records_per_shard=PER_SHARD,
        progress=False,
    )
    assert _files(resumed) == _files(dst)  # no temporaries left, every byte the same


def test_shards_of_processes_are_disjoint_and_cover_every_shard():
    parts = [shards_of(p, 3, 7) for p in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(parts, [])) == list(range(7))
    with pytest.raises(ValueError, match="process 3 outside"):
        shards_of(3, 3, 7)


def test_two_processes_write_their_shards_and_process_0_the_manifest(encoded, clips, tmp_path):
    """Process index and count injected, the processes run in turn: process 0 alone writes its
    shards but names the peer's missing one; process 1 writes shards 1 and 3 and no manifest;
    process 0 rerun writes the manifest, and the directory is byte-identical to one process's."""
    dst, _ = encoded
    split = tmp_path / "split"
    met = []
    args = dict(
        dtype="float32",
        records_per_shard=PER_SHARD,
        progress=False,
        process_count=2,
        barrier=lambda: met.append(True),
    )
    n = NUM_CLIPS // PER_SHARD
    with pytest.raises(LatentRecordsError, match=f"{shard_name(1, n)}: not written"):
        encode_folder(_config(), str(clips), str(split), process_index=0, **args)
    assert encode_folder(_config(), str(clips), str(split), process_index=1, **args) is None
    assert sorted(f for f in os.listdir(split) if f.endswith(".array_record")) == [
        shard_name(s, n) for s in range(n)
    ]
    assert not (split / MANIFEST_FILE).exists() and len(met) == 2
    manifest = encode_folder(_config(), str(clips), str(split), process_index=0, **args)
    assert manifest["num_examples"] == NUM_CLIPS and len(met) == 3
    assert _files(split) == _files(dst)


def test_two_real_processes_encode_what_one_does(encoded, clips, tmp_path):
    """`python -m harmony_jax.encode` as 2 JAX processes over localhost (gloo): each writes its
    shards, process 0 the manifest after the barrier; every byte as one process wrote it."""
    dst, _ = encoded
    pod = tmp_path / "pod"
    cmd, env = _encode_command(clips, pod)
    cluster = LocalCluster(
        cmd, count=2, devices=1, cwd=ROOT, env=env, log_dir=str(tmp_path / "logs")
    )
    assert cluster.wait(timeout=300, grace=30) == [0, 0], cluster.logs
    assert _files(pod) == _files(dst)


def test_bad_clips_are_skipped_as_the_folder_skips_them(clips, tmp_path):
    root = tmp_path / "clips"
    shutil.copytree(clips, root)
    data = (root / "c1.mp4").read_bytes()
    (root / "c1.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError, match="c1.mp4"):
        encode_folder(
            _config(), str(root), str(tmp_path / "strict"), records_per_shard=4, progress=False
        )
    manifest = encode_folder(
        _config(skip_bad_files=True),
        str(root),
        str(tmp_path / "skip"),
        dtype="float32",
        records_per_shard=4,
        progress=False,
    )
    assert manifest["skipped_clips"] == 1
    assert manifest["examples"][1]["path"] == "c2.mp4"  # what ClipFolder[1] yields
    records = make_source(
        _config(source="latents", root=str(tmp_path / "skip"), skip_bad_files=True)
    )
    np.testing.assert_array_equal(records[1]["video"], records[2]["video"])


# ---- refusals: one line naming the file and the key


def test_refuses_a_missing_or_unfinished_manifest(encoded, tmp_path):
    with pytest.raises(LatentRecordsError, match=r"manifest.json: no manifest .*encode the clip"):
        make_source(_config(source="latents", root=str(tmp_path)))
    dst, _ = encoded
    unfinished = tmp_path / "unfinished"
    shutil.copytree(dst, unfinished)
    os.unlink(unfinished / MANIFEST_FILE)
    with pytest.raises(LatentRecordsError, match="did not finish: rerun"):
        make_source(_config(source="latents", root=str(unfinished)))


def test_refuses_a_manifest_that_disagrees_with_the_config(encoded):
    dst, _ = encoded
    with pytest.raises(
        LatentRecordsError,
        match=r"manifest.json: encoded with data.height=16, this run's "
        r"config.data.height is 32",
    ):
        make_source(_config(source="latents", root=str(dst), height=32))


def test_refuses_latents_of_another_codec(encoded):
    dst, _ = encoded
    config = _config(source="latents", root=str(dst))
    config.codecs.audio.name = "mmaudio"
    config.model.audio.in_channels = 20
    with pytest.raises(
        LatentRecordsError,
        match=r"manifest.json: encoded by audio codec 'mel', this run's "
        r"config.codecs.audio.name is 'mmaudio'",
    ):
        make_source(config)


def test_refuses_truncated_and_corrupt_shards(encoded, tmp_path):
    dst, _ = encoded
    name = shard_name(1, NUM_CLIPS // PER_SHARD)
    for how in ("truncated", "corrupt"):
        bad = tmp_path / how
        shutil.copytree(dst, bad)
        data = bytearray((bad / name).read_bytes())
        if how == "truncated":
            data = data[: len(data) // 2]
        else:
            data[200:260] = bytes(60)  # inside record 2's chunk
        (bad / name).write_bytes(bytes(data))
        config = _config(source="latents", root=str(bad))
        with pytest.raises(LatentRecordsError, match=name):
            records = make_source(config)
            records[2], records[3]


def test_refuses_to_resume_an_encode_with_other_settings(encoded, clips):
    dst, _ = encoded
    with pytest.raises(
        LatentRecordsError,
        match=r"encode.json: an encode with "
        r"dtype='float32' is in this directory",
    ):
        encode_folder(
            _config(),
            str(clips),
            str(dst),
            dtype="bfloat16",
            records_per_shard=PER_SHARD,
            progress=False,
        )


def test_precomputed_text_serves_the_stored_empty_prompt_only():
    empty = np.full((1, 4), 0.5, np.float32)
    text = PrecomputedText(max_len=3, dim=4, empty=empty)
    ids, mask = text.tokenize(["", ""])
    assert ids.shape == (2, 3, 4) and mask.tolist() == [[True, False, False]] * 2
    np.testing.assert_array_equal(ids[:, 0], 0.5)
    assert not ids[:, 1:].any()
    with pytest.raises(ValueError, match="only the empty prompt"):
        text.tokenize(["a cat"])
    padded, mask = pad_tokens(np.ones((1, 2, 4)), 3)
    assert mask.tolist() == [[True, True, False]] and padded[0, 2].sum() == 0
