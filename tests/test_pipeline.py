"""Training pipeline: batch layout, determinism, resume at a step, process sharding, workers."""

import json

import numpy as np
import pytest

from configs import tiny
from harmony_jax.codecs import make_text_encoder
from harmony_jax.data.pipeline import make_source, make_train_dataset, make_train_iterator
from harmony_jax.media import write_av


class IndexSource:
    """Item i is filled with the value i, so batches show which items they hold."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return dict(
            video=np.full((2, 2, 2, 3), index, np.float32),
            audio=np.full(8, index, np.float32),
            video_caption=f"clip {index}",
            audio_caption="a tone",
            transcript="",
        )


def _config(batch_size=4):
    config = tiny.get_config()
    config.batch_size = batch_size
    return config


def _indices(source_size, steps, *, seed=0, start_step=0, block=0, blocks=1, batch_size=4):
    config = _config(batch_size)
    ds = make_train_dataset(
        IndexSource(source_size),
        config,
        make_text_encoder(config),
        seed=seed,
        start_step=start_step,
        block=block,
        blocks=blocks,
    )
    it = iter(ds)
    return [next(it)["video"][:, 0, 0, 0, 0].astype(int).tolist() for _ in range(steps)]


def test_batch_layout():
    config = tiny.get_config()
    batch = next(make_train_iterator(config, make_text_encoder(config), seed=0, block=0, blocks=1))
    d, b, length = config.data, config.batch_size, config.codecs.text.max_len
    expected = dict(
        video=((b, d.num_frames, d.height, d.width, 3), np.float32),
        audio=((b, round(d.num_frames / d.fps * d.sample_rate)), np.float32),
        video_text_ids=((b, length), np.int32),
        video_text_mask=((b, length), np.bool_),
        audio_text_ids=((b, length), np.int32),
        audio_text_mask=((b, length), np.bool_),
        transcript_ids=((b, config.model.transcript.max_len), np.int32),
    )
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    assert batch["video_text_mask"].any(axis=1).all()


def test_deterministic_and_seeded():
    first = _indices(10, 6)
    assert first == _indices(10, 6)
    assert first != _indices(10, 6, seed=1)
    stream = sum(first, [])
    assert sorted(stream[:10]) == list(range(10))  # an epoch is a permutation
    assert sorted(stream[10:20]) == list(range(10)) and stream[10:20] != stream[:10]


def test_resume_at_step_matches_uninterrupted_run():
    full = _indices(10, 8)
    for start in (1, 3, 5):  # 3 and 5 cross epoch boundaries
        assert _indices(10, 8 - start, start_step=start) == full[start:]


def test_process_shards_are_disjoint_and_form_the_global_batch():
    steps = 5
    global_batches = _indices(10, steps, batch_size=4)
    shards = [_indices(10, steps, batch_size=4, block=p, blocks=2) for p in range(2)]
    for k in range(steps):
        a, b = shards[0][k], shards[1][k]
        assert len(a) == len(b) == 2
        assert a + b == global_batches[k]  # side by side: the single-process batch, in order
    # Within one epoch (the first two steps: 8 of 10 elements) the processes never share a clip.
    first_epoch = [set(sum(s[:2], [])) for s in shards]
    assert not first_epoch[0] & first_epoch[1]


def test_bad_arguments():
    config = _config(batch_size=3)
    encoder = make_text_encoder(config)
    with pytest.raises(ValueError, match="batch_size=3 is not divisible into 2 blocks"):
        make_train_dataset(IndexSource(4), config, encoder, seed=0, blocks=2)
    config.data.source = "nope"
    with pytest.raises(ValueError, match="config.data.source='nope'.*sounding_shapes"):
        make_source(config)
    config.data.source = "clip_folder"
    with pytest.raises(ValueError, match="config.data.root"):
        make_source(config)


def test_clip_folder_source_from_config(tmp_path):
    config = _config(batch_size=2)
    d = config.data
    num_samples = round(d.num_frames / d.fps * d.sample_rate)
    video = np.zeros((d.num_frames, d.height, d.width, 3), np.float32)
    write_av(tmp_path / "a.mp4", video, d.fps, np.zeros(num_samples, np.float32), d.sample_rate)
    (tmp_path / "captions.jsonl").write_text(
        json.dumps(dict(path="a.mp4", video_caption="dark", audio_caption="quiet", transcript="hi"))
        + "\n"
    )
    d.source, d.root = "clip_folder", str(tmp_path)
    batch = next(make_train_iterator(config, make_text_encoder(config), seed=0, block=0, blocks=1))
    assert batch["video"].shape == (2, d.num_frames, d.height, d.width, 3)
    assert batch["transcript_ids"][:, :2].tolist() == [[ord("h") + 1, ord("i") + 1]] * 2


def test_worker_processes_give_the_same_batches():
    config = tiny.get_config()
    encoder = make_text_encoder(config)
    serial = make_train_iterator(config, encoder, seed=3, start_step=1, block=0, blocks=1)
    config.data.num_workers = 2
    parallel = make_train_iterator(config, encoder, seed=3, start_step=1, block=0, blocks=1)
    try:
        for _ in range(3):
            a, b = next(serial), next(parallel)
            assert all(np.array_equal(a[k], b[k]) for k in a)
    finally:
        parallel.close()
