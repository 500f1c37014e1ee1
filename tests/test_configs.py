"""Every config loads, builds its model config, and rejects unknown keys."""

import glob
import importlib.util
import os

import pytest

from harmony_jax.model import ModelConfig

CONFIGS = sorted(
    p
    for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py"))
    if not p.endswith("__init__.py")
)


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads(path):
    config = _load(path)
    model = ModelConfig.from_config(config.model, video_latent_rate=config.data.fps)
    assert model.depth >= 1
    assert config.checkpoint_every > 0 and config.total_steps > 0
    config.lock()  # as config_flags does with the config it parses
    with pytest.raises(AttributeError, match="learning_rate"):
        config.optim.learning_rate = 1.0  # a typo of optim.lr is refused, not silently added


def _keys(config, prefix=""):
    for key, value in config.items():
        yield prefix + key
        if hasattr(value, "items"):
            yield from _keys(value, f"{prefix}{key}.")


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_sets_only_keys_the_defaults_define(path):
    # base_config() is not locked while a config file edits it: a misspelt key there would be
    # added silently and never read
    from harmony_jax.defaults import base_config

    extra = set(_keys(_load(path))) - set(_keys(base_config()))
    assert not extra, f"{os.path.basename(path)} sets keys the defaults lack: {sorted(extra)}"


def test_saved_config_reads_onto_todays_defaults(tmp_path):
    from etils import epath

    from harmony_jax.defaults import base_config
    from harmony_jax.errors import CheckpointError
    from harmony_jax.training.checkpoint import read_config_file

    saved = base_config()
    saved.seed = 7
    del saved.model.video["text_pad_to"]  # a run saved before the key existed
    file = epath.Path(tmp_path) / "config.json"
    file.write_text(saved.to_json())
    config = read_config_file(file)
    assert (
        config.seed == 7 and config.model.video.text_pad_to == base_config().model.video.text_pad_to
    )
    file.write_text('{"seed": "seven"}')  # another type than the key's
    with pytest.raises(CheckpointError, match="config.json: damaged"):
        read_config_file(file)
    file.write_text('{"optim": {"on_nonfinite": "explode"}}')  # a value no longer accepted
    with pytest.raises(CheckpointError, match=r"config.json: .*optim.on_nonfinite='explode'"):
        read_config_file(file)


def test_unknown_prediction_names_the_key():
    from harmony_jax.system import build_system

    config = _load(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py"))
    config.flow.prediction = "eps"
    with pytest.raises(ValueError, match=r"config.flow.prediction='eps'.*velocity"):
        build_system(config)


def test_x0_prediction_refuses_an_imported_velocity_tower():
    from harmony_jax.system import build_system

    config = _load(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py"))
    config.flow.prediction = "x0"
    config.init.video_from = "ckpt/wan_video_tower"
    with pytest.raises(ValueError, match=r"video_from=ckpt/wan_video_tower.*velocity"):
        build_system(config)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("pos_embed", "sincos", "no absolute position embedding"),
        ("rope_theta", 100.0, "trained with RoPE base 10000"),
    ],
)
def test_an_imported_wan_tower_keeps_wans_positions(key, value, message):
    from configs import tiny
    from harmony_jax.system import build_system

    config = tiny.get_config()
    config.init.video_from = "/some/converted/wan"
    config.model.video.text_pad_to = 512
    config.model.video[key] = value
    with pytest.raises(ValueError, match=message):
        build_system(config)
