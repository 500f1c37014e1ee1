"""Our transcript encoder up to its `proj` vs f5-tts's `TextEmbedding` (v1: mask_padding, ConvNeXt
blocks) with the same random weights, loaded through `convert f5-text` from F5-TTS's release
layouts (safetensors with the EMA prefix, .pt under 'ema_model_state_dict'), with F5's shipped
vocab.txt; our vocabulary ids vs F5's `list_str_to_idx`."""

import importlib
import importlib.util
import pathlib
import shutil
import sys
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

from harmony_jax.codecs.text import FILLER_INDEX, encode_transcript_vocab, read_vocab
from harmony_jax.convert import f5_text
from harmony_jax.defaults import base_config
from harmony_jax.model.config import TranscriptConfig
from harmony_jax.model.transcript import TranscriptEncoder
from harmony_jax.weights.state_dict import StateDictMismatchError

torch = pytest.importorskip("torch")
pytest.importorskip("f5_tts")
pytest.importorskip("x_transformers")

TOLERANCE = 1e-4
TEXTS = ["Hello, world!", "ni3 hao3 ~ ü", "  a\tb€"]  # tab and € are outside F5's vocabulary
DIM, LAYERS, MULT, LENGTH = 16, 2, 2, 24


def _import_f5():
    """f5_tts's `backbones.dit` and `utils` without `f5_tts.model`'s __init__ (which imports the
    trainer: wandb, datasets, ...) and with a stand-in for torchaudio, which `modules.py` imports
    for its mel front end only and which has no wheel for our torch 2.13."""
    root = pathlib.Path(importlib.util.find_spec("f5_tts").submodule_search_locations[0])
    package = types.ModuleType("f5_tts.model")
    package.__path__ = [str(root / "model")]
    saved = {name: sys.modules.get(name) for name in ("f5_tts.model", "torchaudio")}
    sys.modules["f5_tts.model"] = package
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    try:
        dit = importlib.import_module("f5_tts.model.backbones.dit")
        utils = importlib.import_module("f5_tts.model.utils")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return dit, utils, root / "infer" / "examples" / "vocab.txt"


DIT, UTILS, VOCAB_FILE = _import_f5()
VOCAB = read_vocab(VOCAB_FILE)
CFG = TranscriptConfig(
    vocab_size=len(VOCAB) + 1, dim=DIM, conv_layers=LAYERS, conv_mult=MULT, max_len=64
)


@pytest.fixture(scope="module")
def reference():
    """F5's TextEmbedding with every parameter randomised (norm scales off 1, GRN off 0)."""
    torch.manual_seed(0)
    model = DIT.TextEmbedding(
        len(VOCAB), DIM, mask_padding=True, conv_layers=LAYERS, conv_mult=MULT
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _f5_state(model) -> dict:
    """The text embedding inside a whole F5-TTS EMA state dict (other keys are ignored)."""
    state = {
        f"ema_model.transformer.text_embed.{k}": v.clone() for k, v in model.state_dict().items()
    }
    state["ema_model.transformer.proj_out.weight"] = torch.zeros(3, 4)
    state["ema_model.step"] = torch.tensor(7)
    return state


@pytest.fixture(scope="module")
def release(reference, tmp_path_factory):
    """An F5-TTS release folder: model_*.safetensors beside vocab.txt."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("F5TTS_v1_Base")
    save_file(_f5_state(reference), root / "model_1250000.safetensors")
    shutil.copy(VOCAB_FILE, root / "vocab.txt")
    return root


def _config():
    config = base_config()
    config.model.transcript.update(
        vocab_size=CFG.vocab_size, dim=DIM, conv_layers=LAYERS, conv_mult=MULT, max_len=CFG.max_len
    )
    return config


def _f5_output(model, texts) -> np.ndarray:
    ids = UTILS.list_str_to_idx([list(t) for t in texts], VOCAB)  # -1 pads
    with torch.no_grad():
        return model(ids, LENGTH).numpy()


def test_vocab_ids_match_list_str_to_idx():
    ours = encode_transcript_vocab(TEXTS, VOCAB, LENGTH)
    theirs = UTILS.list_str_to_idx([list(t) for t in TEXTS], VOCAB).numpy() + 1
    want = np.zeros_like(ours)
    want[:, : theirs.shape[1]] = theirs
    np.testing.assert_array_equal(ours, want)
    assert VOCAB[" "] == FILLER_INDEX and ours[2, 3] == FILLER_INDEX + 1  # '\t' -> filler


def test_text_embedding_parity(reference, release, tmp_path):
    dst = tmp_path / "f5_text"
    f5_text.convert_checkpoint(str(release), str(dst), _config())
    assert f5_text.load_vocab(str(dst)) == VOCAB
    module = TranscriptEncoder(CFG, out_dim=8)
    ids = encode_transcript_vocab(TEXTS, VOCAB, LENGTH)
    fresh = {"dit": {"transcript": nn.meta.unbox(module.init(jax.random.key(1), ids)["params"])}}
    loaded = f5_text.load_transcript(fresh, str(dst))
    params = loaded["dit"]["transcript"]
    np.testing.assert_array_equal(
        params["proj"]["kernel"], fresh["dit"]["transcript"]["proj"]["kernel"]
    )  # proj is ours, not F5's: kept
    got = np.asarray(module.apply({"params": params}, ids, features_only=True))
    want = _f5_output(reference, TEXTS)
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    print(f"F5-TTS TextEmbedding: max relative error {err:.2e}")
    assert err < TOLERANCE
    assert np.all(got[ids == 0] == 0)


def test_pt_checkpoint_reads_the_same(reference, release, tmp_path):
    torch.save(
        {"ema_model_state_dict": _f5_state(reference), "model_state_dict": {}},
        tmp_path / "model_1250000.pt",
    )
    shutil.copy(VOCAB_FILE, tmp_path / "vocab.txt")
    from_pt = f5_text.read_f5_text(f5_text.read_upstream(tmp_path)[0], CFG)
    from_st = f5_text.read_f5_text(f5_text.read_upstream(release)[0], CFG)
    assert from_pt.keys() == from_st.keys()
    for k in from_pt:
        np.testing.assert_array_equal(from_pt[k], from_st[k])


def test_mismatches_are_named_and_nothing_is_written(reference, tmp_path):
    state = _f5_state(reference)
    prefix = "ema_model.transformer.text_embed."
    del state[prefix + "text_blocks.0.grn.gamma"]
    state[prefix + "text_blocks.1.extra.weight"] = torch.zeros(2)
    state[prefix + "text_blocks.1.pwconv1.weight"] = torch.zeros(5, DIM)
    with pytest.raises(StateDictMismatchError) as e:
        f5_text.read_f5_text(state, CFG)
    for name in (
        "1 missing: text_blocks.0.grn.gamma",
        "1 unexpected: text_blocks.1.extra",
        f"text_blocks.1.pwconv1.weight (5, {DIM}) (expected ({DIM * MULT}, {DIM}))",
    ):
        assert name in str(e.value)

    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors")
    shutil.copy(VOCAB_FILE, tmp_path / "vocab.txt")
    with pytest.raises(StateDictMismatchError):
        f5_text.convert_checkpoint(str(tmp_path), str(tmp_path / "out"), _config())
    config = _config()
    config.model.transcript.vocab_size = 100
    with pytest.raises(ValueError, match="lists 2545 tokens.*vocab_size is 100"):
        f5_text.convert_checkpoint(str(tmp_path), str(tmp_path / "out"), config)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
