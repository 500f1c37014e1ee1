"""Our umT5 encoder vs transformers' UMT5EncoderModel with the same random weights, loaded through
our importer from the upstream layouts the tests write from the reference (a diffusers-style
pipeline folder: sharded `text_encoder/` + `tokenizer/spiece.model`; Wan's original .pth), and
through `convert umt5`. The tokenizer is a tiny sentencepiece model trained here."""

import dataclasses
import io

import jax
import numpy as np
import pytest

from harmony_jax.codecs import make_text_encoder, umt5_weights
from harmony_jax.codecs.umt5 import PAD_ID, UMT5Config, relative_buckets
from harmony_jax.codecs.umt5_text import UMT5TextEncoder
from harmony_jax.convert import umt5 as convert_umt5
from harmony_jax.defaults import base_config
from harmony_jax.system import System
from harmony_jax.weights.state_dict import StateDictMismatchError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

TINY = UMT5Config(
    vocab_size=72,
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=48,
    num_layers=2,
    num_buckets=8,
    max_distance=20,
)
MAX_LEN = 32
PROMPTS = ["a red ball bounces fast to the left", "ein  blauer Würfel"]
TOLERANCE = 1e-4
_CORPUS = [
    "a red ball bounces fast",
    "the blue square slides slowly to the left wall",
    "ein roter Ball springt schnell",
    "un carré bleu glisse lentement",
    "two green balls collide and bounce against the floor",
    "ein blauer Würfel fällt",
]


def _train_spiece() -> bytes:
    """A sentencepiece unigram model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 10),
        model_writer=model,
        vocab_size=TINY.vocab_size - 8,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        character_coverage=1.0,
        minloglevel=2,
    )
    return model.getvalue()


@pytest.fixture(scope="module")
def reference():
    """transformers' encoder with every parameter randomised (norm scales off 1)."""
    torch.manual_seed(0)
    config = transformers.UMT5Config(
        vocab_size=TINY.vocab_size,
        d_model=TINY.d_model,
        d_kv=TINY.d_kv,
        num_heads=TINY.num_heads,
        d_ff=TINY.d_ff,
        num_layers=TINY.num_layers,
        relative_attention_num_buckets=TINY.num_buckets,
        relative_attention_max_distance=TINY.max_distance,
        dropout_rate=0.0,
    )
    model = transformers.UMT5EncoderModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def pipeline_root(reference, tmp_path_factory):
    """A diffusers-style pipeline folder: sharded text_encoder/ and tokenizer/spiece.model."""
    root = tmp_path_factory.mktemp("pipeline")
    reference.save_pretrained(root / "text_encoder", max_shard_size="20KB")
    assert len(list((root / "text_encoder").glob("*.safetensors"))) >= 2
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "spiece.model").write_bytes(_train_spiece())
    return root


def reference_states(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(ids != PAD_ID).long(),
        )
    return out.last_hidden_state.numpy()


def rel_err(a, b, mask) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)[mask]) / np.max(np.abs(b[mask])))


def test_transformers_layout_parity_with_padding(reference, pipeline_root):
    encoder = UMT5TextEncoder(str(pipeline_root), max_len=MAX_LEN, config=TINY)
    ids, mask = encoder.tokenize(PROMPTS)
    sp = spm.SentencePieceProcessor(model_file=str(pipeline_root / "tokenizer" / "spiece.model"))
    for row, text in enumerate(PROMPTS):  # T5: pieces + </s>, then padding
        want = sp.encode(" ".join(text.split())) + [1]
        assert ids[row].tolist() == want + [PAD_ID] * (MAX_LEN - len(want))
    assert 2 < mask.sum(1).min() < mask.sum(1).max() < MAX_LEN  # two lengths, both padded
    # through the System, as training calls it: the frozen params are the encoder's own
    system = System(
        model_config=None,
        clip=None,
        sampler=None,
        prediction="velocity",
        frame_noise_correlation=0.0,
        axis_rules=(),
        video_codec=None,
        audio_codec=None,
        text_encoder=encoder,
        transcript_tokenizer=None,
    )
    got = np.asarray(jax.jit(system.embed_text)({}, ids))
    want = reference_states(reference, ids)
    err = rel_err(got, want, mask)
    print(f"umT5 transformers layout: max relative error {err:.2e} on real tokens")
    assert err < TOLERANCE
    assert np.all(got[~mask] == 0.0)  # padding zeroed, as Wan's pipeline feeds the DiT


def test_original_layout_round_trip(reference, pipeline_root, tmp_path):
    """Wan's t5.py names, in a bfloat16 .pth beside google/umt5-xxl/spiece.model."""
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    ours = umt5_weights.read_umt5(state, TINY)
    original = umt5_weights.export_umt5(ours, TINY, "original")
    assert {
        "token_embedding.weight",
        "norm.weight",
        "blocks.1.ffn.gate.0.weight",
        "blocks.1.ffn.fc1.weight",
        "blocks.0.pos_embedding.embedding.weight",
        "blocks.0.attn.o.weight",
        "blocks.0.norm2.weight",
    } <= original.keys()
    file = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in original.items()}, file)
    (tmp_path / "google" / "umt5-xxl").mkdir(parents=True)
    (tmp_path / "google" / "umt5-xxl" / "spiece.model").write_bytes(
        (pipeline_root / "tokenizer" / "spiece.model").read_bytes()
    )
    back = umt5_weights.read_umt5(umt5_weights.read_upstream(file, TINY)[0], TINY)
    for k, v in ours.items():
        assert back[k].dtype == np.dtype("bfloat16"), k
        want = torch.from_numpy(v).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(back[k].astype(np.float32), want, err_msg=k)
    assert umt5_weights.find_spiece(file) == tmp_path / "google" / "umt5-xxl" / "spiece.model"
    transformers_back = umt5_weights.export_umt5(back, TINY, "transformers")
    assert transformers_back.keys() | {"encoder.embed_tokens.weight"} == state.keys()


def test_convert_round_trip(pipeline_root, tmp_path):
    dst = tmp_path / "umt5"
    convert_umt5.convert_checkpoint(str(pipeline_root), str(dst), base_config())
    direct = UMT5TextEncoder(str(pipeline_root), max_len=MAX_LEN, config=TINY)
    converted = UMT5TextEncoder(str(dst), max_len=MAX_LEN, config=TINY)
    np.testing.assert_array_equal(converted.tokenize(PROMPTS)[0], direct.tokenize(PROMPTS)[0])
    assert "params" not in converted.__dict__  # tokenizing read only the tokenizer leaf
    got = jax.tree.leaves_with_path(converted.params)
    want = dict(jax.tree.leaves_with_path(direct.params))
    assert len(got) == len(want) == 12
    for path, leaf in got:
        np.testing.assert_array_equal(leaf, want[path], err_msg=jax.tree_util.keystr(path))
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_umt5.convert_checkpoint(str(pipeline_root), str(dst), base_config())
    with pytest.raises(StateDictMismatchError, match="umT5 checkpoint"):  # another architecture
        UMT5TextEncoder(
            str(dst),
            max_len=MAX_LEN,
            config=UMT5Config(
                vocab_size=72, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2
            ),
        ).params
    # eps and max_distance change no shape: the recorded architecture refuses them by name
    other = dataclasses.replace(TINY, eps=1e-5, max_distance=128)
    with pytest.raises(
        ValueError,
        match=r"relative_attention_max_distance=20 but the text "
        r"encoder has 128; layer_norm_epsilon=1e-06 but the text encoder has 1e-05",
    ):
        UMT5TextEncoder(str(dst), max_len=MAX_LEN, config=other).params


def test_mismatches_are_named(reference, pipeline_root):
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    state["encoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(
        StateDictMismatchError,
        match=r"(?s)1 missing: encoder\.block\.1\.layer\."
        r"1\.DenseReluDense\.wo\.weight.*mis-shaped: encoder\.block\.0\.layer\.0\."
        r"SelfAttention\.q\.weight \(3, 3\) \(expected \(32, 32\)\)",
    ):
        umt5_weights.read_umt5(state, TINY)
    with pytest.raises(ValueError, match=r"num_heads=4 \(expected 64\)"):  # config.json checked
        UMT5TextEncoder(str(pipeline_root), max_len=MAX_LEN).params


def test_relative_buckets_match_transformers():
    from transformers.models.umt5.modeling_umt5 import UMT5Attention

    for length, buckets, distance in ((600, 32, 128), (40, TINY.num_buckets, TINY.max_distance)):
        attention = UMT5Attention(
            transformers.UMT5Config(
                relative_attention_num_buckets=buckets, relative_attention_max_distance=distance
            ),
            has_relative_attention_bias=True,
        )
        positions = torch.arange(length)
        want = attention._relative_position_bucket(positions[None, :] - positions[:, None])
        np.testing.assert_array_equal(relative_buckets(length, buckets, distance), want.numpy())


def test_factory_builds_without_reading(tmp_path):
    config = base_config()
    config.codecs.text.update(name="umt5", path=str(tmp_path / "absent"), max_len=512)
    encoder = make_text_encoder(config)
    assert (encoder.dim, encoder.max_len, encoder.trainable) == (4096, 512, False)
    with pytest.raises(FileNotFoundError, match="no sentencepiece model"):
        encoder.tokenize(["hello"])
    config.codecs.text.path = ""
    with pytest.raises(ValueError, match=r"config\.codecs\.text\.path is empty"):
        make_text_encoder(config).params


def test_long_prompts_are_truncated_with_end_token(pipeline_root):
    encoder = UMT5TextEncoder(str(pipeline_root), max_len=6, config=TINY)
    ids, mask = encoder.tokenize([" ".join(_CORPUS)])
    assert mask.all() and ids[0, -1] == 1  # 5 pieces, then </s>


def test_published_umt5_xxl_layout():
    """The text encoder's default architecture expects exactly the keys and shapes of
    google/umt5-xxl's UMT5EncoderModel (built on the meta device: no memory)."""
    with torch.device("meta"):
        published = transformers.UMT5EncoderModel(
            transformers.UMT5Config(
                vocab_size=256384,
                d_model=4096,
                d_kv=64,
                num_heads=64,
                d_ff=10240,
                num_layers=24,
                relative_attention_num_buckets=32,
                relative_attention_max_distance=128,
            )
        )
    want = {k: tuple(v.shape) for k, v in published.state_dict().items()}
    del want["encoder.embed_tokens.weight"]  # tied to shared.weight
    assert umt5_weights.upstream_shapes(UMT5Config(), "transformers") == want
