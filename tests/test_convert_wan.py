"""The Wan importer (no torch needed): exact round trips through both upstream layouts, scanned
and unrolled layers; only video-tower leaves change; every fault named in one error;
`convert wan` writes all-or-nothing; training starts from its output, laid out as the params."""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from safetensors.numpy import save_file

from configs import tiny
from harmony_jax.convert import wan
from harmony_jax.model import ModelConfig
from harmony_jax.system import build_system
from harmony_jax.training.loop import train
from harmony_jax.weights import store
from harmony_jax.weights.state_dict import StateDictMismatchError

REPO = os.path.join(os.path.dirname(__file__), "..")
CFG = ModelConfig.from_config(tiny.get_config().model, video_latent_rate=4.0)
UNROLLED = dataclasses.replace(CFG, scan_layers=False)


abstract_dit = functools.lru_cache(wan.abstract_dit)


def random_params(cfg: ModelConfig, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "dit": jax.tree.map(
            lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract_dit(cfg)
        )
    }


def is_video(path: str) -> bool:
    """Video-tower leaves, by our naming (independent of the importer's own selection)."""
    top = path.split("/")[1]
    return top.startswith("video_") or path.split("/")[2:3] == ["video_block"]


def flat(params) -> dict:
    return traverse_util.flatten_dict(params, sep="/")


def write_sharded(state: dict, directory, shards: int = 2) -> None:
    """`state` as `shards` safetensors files with a diffusers-style index."""
    os.makedirs(directory, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: state[k] for k in part}, os.path.join(directory, name))
        weight_map.update({k: name for k in part})
    with open(os.path.join(directory, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


@pytest.mark.parametrize("cfg", [CFG, UNROLLED], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("layout", wan.LAYOUTS)
def test_round_trip_replaces_exactly_the_video_tower(layout, cfg):
    source, target = random_params(cfg, 0), random_params(cfg, 1)
    state = wan.export_wan(source, cfg, layout)
    assert ("head.head.weight" in state) == (layout == "original")
    out = wan.import_wan(state, target, cfg)
    src, tgt, got = flat(source), flat(target), flat(out)
    assert got.keys() == tgt.keys()
    assert any("/interaction/" in p for p in got) and any("/audio_block/" in p for p in got)
    for path, value in got.items():
        if is_video(path):  # replaced, bit for bit: no video leaf was skipped
            np.testing.assert_array_equal(value, src[path], err_msg=path)
            assert not np.array_equal(value, tgt[path]), path
        else:  # audio tower, interaction, transcript: untouched
            assert value is tgt[path], path
    again = wan.export_wan(out, cfg, layout)
    assert again.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(again[k], state[k], err_msg=k)


def test_unrolled_layers_take_their_own_blocks():
    source = random_params(CFG, 0)
    out = wan.import_wan(
        wan.export_wan(source, CFG, "diffusers"), random_params(UNROLLED, 1), UNROLLED
    )
    stacked = flat(source["dit"]["layers"]["video_block"])
    for i in range(CFG.depth):
        layer = flat(out["dit"][f"layers_{i}"]["video_block"])
        assert layer.keys() == stacked.keys()
        for path, value in stacked.items():
            np.testing.assert_array_equal(layer[path], value[i], err_msg=f"layers_{i}/{path}")


@pytest.mark.parametrize(
    "layout,misshaped",
    [("diffusers", "blocks.0.norm2.weight"), ("original", "blocks.0.norm3.weight")],
)
def test_every_mismatch_is_named_in_one_error(layout, misshaped):
    state = wan.export_wan(random_params(CFG, 0), CFG, layout)
    missing = "blocks.1.ffn.2.bias" if layout == "original" else "blocks.1.ffn.net.2.bias"
    del state[missing]
    state["blocks.0.img_emb.weight"] = np.zeros((3, 3), np.float32)
    state[misshaped] = np.zeros((7,), np.float32)
    with pytest.raises(StateDictMismatchError) as err:
        wan.import_wan(state, random_params(CFG, 1), CFG, source="ckpt/")
    message = str(err.value)
    assert "ckpt/" in message and f"({layout} layout)" in message
    assert missing in message and "blocks.0.img_emb.weight" in message
    assert f"{misshaped} (7,) (expected (32,))" in message


def test_unknown_layout_is_named():
    with pytest.raises(ValueError, match="neither a diffusers Wan transformer"):
        wan.import_wan({"foo.weight": np.zeros(3)}, random_params(CFG, 0), CFG)


@pytest.mark.devices(8)
def test_convert_cli_then_load_with_the_params_shardings(tmp_path):
    source = random_params(CFG, 0)
    write_sharded(wan.export_wan(source, CFG, "original"), tmp_path / "wan")
    dst = tmp_path / "converted"
    cmd = [
        sys.executable,
        "-m",
        "harmony_jax.convert",
        "wan",
        f"--src={tmp_path / 'wan'}",
        f"--dst={dst}",
        "--config=configs/tiny.py",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "wan"]  # no leftovers

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))

    def shard(x):
        spec = P(*([None] * (x.ndim - 1)), "fsdp") if x.shape[-1] % 4 == 0 else P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    params = jax.tree.map(shard, random_params(CFG, 1))
    loaded = wan.load_video_tower(params, str(dst))
    old, new, src = flat(params), flat(loaded), flat(source)
    for path in old:
        assert new[path].sharding == old[path].sharding, path
        want = src[path] if is_video(path) else old[path]
        np.testing.assert_array_equal(np.asarray(new[path]), np.asarray(want), err_msg=path)

    # a converted checkpoint for another model is refused by name
    other = dataclasses.replace(CFG, video=dataclasses.replace(CFG.video, ffn_dim=48))
    with pytest.raises(StateDictMismatchError, match="ffn/fc1/kernel"):
        wan.load_video_tower(random_params(other, 0), str(dst))


def test_failed_conversion_leaves_no_destination(tmp_path):
    state = wan.export_wan(random_params(CFG, 0), CFG, "diffusers")
    state["patch_embedding.weight"] = np.zeros((32, 3, 1, 2, 3), np.float32)  # wrong patch
    write_sharded(state, tmp_path / "wan" / "transformer")
    dst = tmp_path / "out"
    with pytest.raises(StateDictMismatchError, match=r"patch_embedding.weight \(32, 3, 1, 2, 3\)"):
        wan.convert_checkpoint(str(tmp_path / "wan"), str(dst), tiny.get_config())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wan"]


def test_failed_write_leaves_no_destination(tmp_path, monkeypatch):
    class Crashing:  # an orbax writer that dies half-way through its files
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def save(self, path, tree):
            os.makedirs(path)
            open(os.path.join(path, "half"), "w").close()
            raise OSError("disk full")

    monkeypatch.setattr(store.ocp, "StandardCheckpointer", Crashing)
    with pytest.raises(OSError, match="disk full"):
        store.save_tree({"a": np.zeros(2)}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_is_kept_unless_overwrite(tmp_path):
    source = random_params(CFG, 0)
    save_file(wan.export_wan(source, CFG, "diffusers"), str(tmp_path / "w.safetensors"))
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        wan.convert_checkpoint(str(tmp_path / "w.safetensors"), str(dst), tiny.get_config())
    assert (dst / "keep").read_text() == "old"
    wan.convert_checkpoint(
        str(tmp_path / "w.safetensors"), str(dst), tiny.get_config(), overwrite=True
    )
    assert not (dst / "keep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "w.safetensors"]
    tower = store.restore_to_host(str(dst), {k: np.float32 for k in store.saved_shapes(str(dst))})
    np.testing.assert_array_equal(
        tower["video_head/proj_out/kernel"], source["dit"]["video_head"]["proj_out"]["kernel"]
    )


def test_training_starts_from_the_converted_tower(tmp_path):
    source = random_params(CFG, 0)
    write_sharded(wan.export_wan(source, CFG, "diffusers"), tmp_path / "wan")
    wan.convert_checkpoint(str(tmp_path / "wan"), str(tmp_path / "video"), tiny.get_config())
    config = tiny.get_config()
    config.update(total_steps=0)
    config.init.video_from = str(tmp_path / "video")
    with pytest.raises(ValueError, match="text_pad_to=0"):  # Wan attends to its padding
        build_system(config)
    config.model.video.text_pad_to = config.codecs.text.max_len
    state = train(config, str(tmp_path / "run"))
    got, src = flat(state.params["dit"]), flat(source["dit"])
    for path, value in src.items():
        if is_video("dit/" + path):
            np.testing.assert_array_equal(np.asarray(got[path]), value, err_msg=path)


def _diffusers_config(**changes) -> str:
    """transformer/config.json as diffusers writes it for the tiny config's video tower."""
    fields = dict(
        _class_name="WanTransformer3DModel",
        _diffusers_version="0.35.0",
        patch_size=[1, 2, 2],
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=3,
        out_channels=3,
        text_dim=32,
        freq_dim=256,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=1024,
        pos_embed_seq_len=None,
    )
    return json.dumps({**fields, **changes})


def test_source_config_json_is_checked_against_the_config(tmp_path):
    source = random_params(CFG, 0)
    write_sharded(wan.export_wan(source, CFG, "diffusers"), tmp_path / "wan" / "transformer")
    config_json = tmp_path / "wan" / "transformer" / "config.json"
    config_json.write_text(_diffusers_config())
    wan.convert_checkpoint(str(tmp_path / "wan"), str(tmp_path / "ok"), tiny.get_config())
    # eps changes no shape: only the config.json can tell
    config_json.write_text(_diffusers_config(eps=1e-5, qk_norm="rms_norm"))
    with pytest.raises(
        ValueError,
        match=r"eps=1e-05 but --config has model\.eps=1e-06; "
        r"qk_norm='rms_norm' but",
    ):
        wan.convert_checkpoint(str(tmp_path / "wan"), str(tmp_path / "no"), tiny.get_config())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harmony_jax.convert",
            "wan",
            f"--src={tmp_path / 'wan'}",
            f"--dst={tmp_path / 'no'}",
            "--config=configs/tiny.py",
        ],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {config_json} ")
    assert "eps=1e-05 but --config has model.eps=1e-06" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok", "wan"]
    # the original layout's WanModel config.json: its caption length is model.video.text_pad_to
    original = tmp_path / "original"
    write_sharded(wan.export_wan(source, CFG, "original"), original)
    (original / "config.json").write_text(
        json.dumps(
            dict(
                _class_name="WanModel",
                model_type="ti2v",
                dim=32,
                ffn_dim=64,
                freq_dim=256,
                in_dim=3,
                out_dim=3,
                num_heads=2,
                num_layers=2,
                eps=1e-6,
                text_len=512,
            )
        )
    )
    with pytest.raises(
        ValueError,
        match=r"text_len=512 but --config has "
        r"model\.video\.text_pad_to=0",
    ):
        wan.convert_checkpoint(str(original), str(tmp_path / "no"), tiny.get_config())
    config = tiny.get_config()
    config.model.video.text_pad_to = 512
    wan.convert_checkpoint(str(original), str(tmp_path / "padded"), config)


@pytest.mark.parametrize("max_len", [1, 4, 600])
def test_convert_works_for_any_transcript_length(tmp_path, max_len):
    source = random_params(CFG, 0)
    save_file(wan.export_wan(source, CFG, "diffusers"), str(tmp_path / "w.safetensors"))
    config = tiny.get_config()
    config.model.transcript.max_len = max_len
    wan.convert_checkpoint(str(tmp_path / "w.safetensors"), str(tmp_path / "out"), config)
    out = str(tmp_path / "out")
    tower = store.restore_to_host(out, {k: np.float32 for k in store.saved_shapes(out)})
    np.testing.assert_array_equal(
        tower["video_head/proj_out/kernel"], source["dit"]["video_head"]["proj_out"]["kernel"]
    )
