"""Our BigVGAN vs the `bigvgan` package's `BigVGAN` (its plain-torch anti-aliased activation) with
the same random weights, loaded through our importer from the package's release layout (a folder
with `bigvgan_generator.pt` = {'generator': state dict} and `config.json`), in tiny versions of
the v1 (MMAudio 16 kHz: tanh, conv_post bias) and v2 (44 kHz: clamp, no bias) endings and of
AMPBlock2 with Snake; the three stored forms of weight norm; `convert bigvgan`."""

import json

import jax
import numpy as np
import pytest

from harmony_jax.codecs import bigvgan_weights
from harmony_jax.codecs.bigvgan import BigVGAN
from harmony_jax.convert import bigvgan as convert_bigvgan
from harmony_jax.defaults import base_config
from harmony_jax.weights.state_dict import StateDictMismatchError
from harmony_jax.weights.upstream import TorchTensor

torch = pytest.importorskip("torch")
pytest.importorskip("bigvgan")
from bigvgan.bigvgan import BigVGAN as TorchBigVGAN  # noqa: E402
from bigvgan.env import AttrDict  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm:FutureWarning")  # the package's

TOLERANCE = 1e-4
FRAMES = 10
_TINY = dict(
    num_mels=8,
    upsample_rates=[4, 2],
    upsample_kernel_sizes=[8, 4],
    upsample_initial_channel=16,
    resblock="1",
    resblock_kernel_sizes=[3, 5],
    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
    activation="snakebeta",
    snake_logscale=True,
)
HPARAMS = {
    "v2_clamp": dict(_TINY, use_tanh_at_final=False, use_bias_at_final=False),
    "v1_tanh": dict(_TINY, use_tanh_at_final=True, use_bias_at_final=True),
    "amp2_snake": dict(
        _TINY,
        resblock="2",
        resblock_dilation_sizes=[[1, 3], [2, 4]],
        activation="snake",
        snake_logscale=False,
    ),
}


def _reference(h: dict):
    """The package's generator with every parameter randomised: Snake parameters off their
    init, weight-norm gains small enough that the output stays inside (-1, 1)."""
    torch.manual_seed(0)
    model = TorchBigVGAN(AttrDict(dict(h))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.copy_(
                    0.3 * torch.randn_like(p)
                    if h["snake_logscale"]
                    else torch.empty_like(p).uniform_(0.7, 1.3)
                )
            elif name.endswith("weight_g"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_((0.5 if name.endswith("bias") else 1.0) * torch.randn_like(p))
    return model


def _release(model, h: dict, folder):
    folder.mkdir()
    torch.save({"generator": model.state_dict()}, folder / "bigvgan_generator.pt")
    (folder / "config.json").write_text(json.dumps({**h, "sampling_rate": 16000}))
    return folder


def _mel() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, FRAMES, 8)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_parity_through_the_release_layout(name, tmp_path):
    h = HPARAMS[name]
    model = _reference(h)
    folder = _release(model, h, tmp_path / "bigvgan")
    config = bigvgan_weights.config_from_hparams(h)
    params = bigvgan_weights.load_bigvgan(str(folder), config)
    mel = _mel()
    with torch.no_grad():
        want = model(torch.from_numpy(mel.transpose(0, 2, 1))).numpy()[:, 0]  # [B, S]
    got = np.asarray(BigVGAN(config).apply({"params": params}, mel))
    assert got.shape == want.shape == (2, FRAMES * config.hop_length)
    assert np.max(np.abs(want)) < 0.99  # nothing pinned at the clamp, so the comparison tells
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    print(f"BigVGAN {name}: max relative error {err:.2e}")
    assert err < TOLERANCE


def test_every_weight_norm_form_reads_the_same():
    h = HPARAMS["v1_tanh"]
    model = _reference(h)
    config = bigvgan_weights.config_from_hparams(h)
    state = model.state_dict()
    by_form = {"weight_g": state}
    by_form["parametrizations"] = {  # what torch's parametrize API (MMAudio's copy) stores
        k.replace("weight_g", "parametrizations.weight.original0").replace(
            "weight_v", "parametrizations.weight.original1"
        ): v
        for k, v in state.items()
    }
    model.remove_weight_norm()
    by_form["plain"] = model.state_dict()
    read = {
        form: bigvgan_weights.read_bigvgan({k: TorchTensor(v) for k, v in s.items()}, config)
        for form, s in by_form.items()
    }
    assert bigvgan_weights.detect_form(by_form["plain"], "plain") == "plain"
    for form in ("parametrizations", "plain"):
        assert read[form].keys() == read["weight_g"].keys()
        for k, v in read[form].items():
            np.testing.assert_allclose(v, read["weight_g"][k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_convert_cli_round_trip_and_mismatches(tmp_path):
    h = HPARAMS["v2_clamp"]
    model = _reference(h)
    folder = _release(model, h, tmp_path / "bigvgan")
    config = bigvgan_weights.config_from_hparams(h)
    dst = tmp_path / "converted"
    convert_bigvgan.convert_checkpoint(str(folder), str(dst), base_config())
    direct = bigvgan_weights.load_bigvgan(str(folder), config)
    converted = bigvgan_weights.load_bigvgan(str(dst), config)
    jax.tree.map(np.testing.assert_array_equal, converted, direct)

    state = {k: TorchTensor(v) for k, v in model.state_dict().items()}
    del state["conv_pre.weight_g"]
    state["resblocks.0.convs1.9.weight_v"] = state["conv_post.weight_v"]
    state["ups.1.0.weight_v"] = TorchTensor(torch.zeros(8, 4, 3))
    with pytest.raises(StateDictMismatchError) as e:
        bigvgan_weights.read_bigvgan(state, config)
    for part in (
        "1 missing: conv_pre.weight_g",
        "1 unexpected: resblocks.0.convs1.9.weight_v",
        "ups.1.0.weight_v (8, 4, 3) (expected (8, 4, 4))",
    ):
        assert part in str(e.value)

    bad_filter = model.state_dict()
    bad_filter["activation_post.upsample.filter"] = torch.zeros(1, 1, 12)
    torch.save({"generator": bad_filter}, folder / "bigvgan_generator.pt")
    with pytest.raises(ValueError, match=r"filters differ.*activation_post\.upsample\.filter"):
        convert_bigvgan.convert_checkpoint(str(folder), str(tmp_path / "bad"), base_config())
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert_bigvgan.convert_checkpoint(str(folder), str(dst), base_config())
