"""Our Wan2.2 VAE codec vs diffusers' AutoencoderKLWan (the residual, patchified Wan2.2 variant:
4 levels, temporal downsampling on the last two) with the same random weights, loaded through
our importer from the upstream layouts the tests write from the reference (a diffusers pipeline
folder with a sharded `vae/`; the original Wan2.2_VAE.pth naming), and through `convert
wan-vae`. 9 frames = the first frame + two 4-frame chunks, so the streaming caches carry real
history from chunk to chunk."""

import jax
import numpy as np
import pytest

from harmony_jax.codecs import make_video_codec, wan_vae_weights
from harmony_jax.codecs.wan22 import WanVAECodec
from harmony_jax.codecs.wan_vae import WanVAEConfig
from harmony_jax.convert import wan_vae as convert_vae
from harmony_jax.defaults import base_config
from harmony_jax.weights import upstream
from harmony_jax.weights.state_dict import StateDictMismatchError, read_safetensors

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

TINY = WanVAEConfig(
    base_dim=8,
    decoder_base_dim=12,
    z_dim=8,
    dim_mult=(1, 2, 4, 4),
    num_res_blocks=1,
    temporal_downsample=(False, True, True),
)
FRAMES, HEIGHT, WIDTH = 9, 32, 48  # latents 3 x 2 x 3: h != w catches an axis swap
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    """diffusers' model with every parameter randomised and non-trivial latent statistics."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    model = AutoencoderKLWan(
        base_dim=TINY.base_dim,
        decoder_base_dim=TINY.decoder_base_dim,
        z_dim=TINY.z_dim,
        dim_mult=list(TINY.dim_mult),
        num_res_blocks=TINY.num_res_blocks,
        temperal_downsample=list(TINY.temporal_downsample),
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=4,
        scale_factor_spatial=16,
        latents_mean=rng.normal(0, 0.3, TINY.z_dim).round(4).tolist(),
        latents_std=rng.uniform(0.5, 1.5, TINY.z_dim).round(4).tolist(),
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def pipeline_root(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    reference.save_pretrained(root / "vae", max_shard_size="100KB")
    assert len(list((root / "vae").glob("*.safetensors"))) >= 2
    return root


def _stats(model) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.asarray(model.config.latents_mean, np.float32)[None, None, None, None],
        np.asarray(model.config.latents_std, np.float32)[None, None, None, None],
    )


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_diffusers_layout_parity(reference, pipeline_root):
    codec = WanVAECodec(str(pipeline_root), fps=8.0, config=TINY)
    mean, std = _stats(reference)
    video = (
        np.random.default_rng(0).uniform(-1, 1, (1, FRAMES, HEIGHT, WIDTH, 3)).astype(np.float32)
    )
    latents = jax.jit(codec.encode)(video)  # jittable; the weights load inside the trace
    assert latents.shape == (1, *codec.latent_shape(FRAMES, HEIGHT, WIDTH), 8) == (1, 3, 2, 3, 8)
    with torch.no_grad():
        posterior = reference.encode(torch.from_numpy(video.transpose(0, 4, 1, 2, 3)))
    want = (posterior.latent_dist.mean.numpy().transpose(0, 2, 3, 4, 1) - mean) / std
    err = rel_err(latents, want)
    print(f"Wan VAE encode (diffusers layout): max relative error {err:.2e}")
    assert err < TOLERANCE

    z = np.random.default_rng(2).standard_normal(want.shape).astype(np.float32)
    frames = codec.decode(z)
    with torch.no_grad():
        raw = torch.from_numpy((z * std + mean).transpose(0, 4, 1, 2, 3))
        want = reference.decode(raw).sample.numpy().transpose(0, 2, 3, 4, 1)
    assert frames.shape == want.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    assert np.mean(np.abs(want) < 1.0) > 0.5  # mostly inside the clip range: a real comparison
    err = rel_err(frames, want)
    print(f"Wan VAE decode (diffusers layout): max relative error {err:.2e}")
    assert err < TOLERANCE


_RESIDUAL = {
    "residual.0": "norm1",
    "residual.2": "conv1",
    "residual.3": "norm2",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
}


def diffusers_from_original(key: str) -> str:
    """The renaming of diffusers' scripts/convert_wan_to_diffusers.py `convert_vae_22`,
    restated: an independent check of the original names our exporter writes."""
    fixed = {
        "conv1": "quant_conv",
        "conv2": "post_quant_conv",
        "encoder.conv1": "encoder.conv_in",
        "decoder.conv1": "decoder.conv_in",
        "encoder.head.0": "encoder.norm_out",
        "encoder.head.2": "encoder.conv_out",
        "decoder.head.0": "decoder.norm_out",
        "decoder.head.2": "decoder.conv_out",
    }
    module, leaf = key.rsplit(".", 1)
    if module in fixed:
        return f"{fixed[module]}.{leaf}"
    parts = module.split(".")
    if parts[1] == "middle":
        name = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}[parts[2]]
        inner = ".".join(parts[3:])
        return f"{parts[0]}.mid_block.{name}.{_RESIDUAL.get(inner, inner)}.{leaf}"
    blocks = {"downsamples": "down_blocks", "upsamples": "up_blocks"}[parts[1]]
    inner = ".".join(parts[5:])
    if inner.startswith(("residual", "shortcut")):
        return f"{parts[0]}.{blocks}.{parts[2]}.resnets.{parts[4]}.{_RESIDUAL[inner]}.{leaf}"
    sampler = {"down_blocks": "downsampler", "up_blocks": "upsampler"}[blocks]
    return f"{parts[0]}.{blocks}.{parts[2]}.{sampler}.{inner}.{leaf}"


def test_original_layout_round_trip(reference, tmp_path):
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    ours = wan_vae_weights.read_vae(state, TINY)
    original = wan_vae_weights.export_vae(ours, TINY, "original")
    assert "encoder.downsamples.1.downsamples.1.time_conv.weight" in original  # Wan's Sequential
    assert "decoder.upsamples.0.upsamples.2.resample.1.weight" in original
    assert {diffusers_from_original(k): k for k in original}.keys() == state.keys()
    for k, v in original.items():
        np.testing.assert_array_equal(v, state[diffusers_from_original(k)], err_msg=k)
    torch.save({k: torch.from_numpy(v) for k, v in original.items()}, tmp_path / "vae.pth")
    save_file(original, str(tmp_path / "vae.safetensors"))
    for state in (upstream.read_pth(tmp_path / "vae.pth"), read_safetensors(tmp_path)):
        back = wan_vae_weights.read_vae(state, TINY, source="original")
        assert back.keys() == ours.keys()
        for k, v in back.items():
            np.testing.assert_array_equal(v, ours[k], err_msg=k)
    # no config.json beside it: Wan2.2's latent statistics, which are for 48 channels
    with pytest.raises(ValueError, match="not z_dim=8"):
        wan_vae_weights.read_upstream(tmp_path / "vae.pth", TINY)


def test_convert_round_trip(pipeline_root, tmp_path):
    dst = tmp_path / "vae_ckpt"
    convert_vae.convert_checkpoint(str(pipeline_root), str(dst), base_config())
    direct = WanVAECodec(str(pipeline_root), fps=8.0, config=TINY).weights
    converted = WanVAECodec(str(dst), fps=8.0, config=TINY).weights
    got, want = jax.tree.leaves_with_path(converted), dict(jax.tree.leaves_with_path(direct))
    assert len(got) == len(want) > 100
    for path, leaf in got:
        np.testing.assert_array_equal(leaf, want[path], err_msg=jax.tree_util.keystr(path))
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_vae.convert_checkpoint(str(pipeline_root), str(dst), base_config())
    other = WanVAEConfig(base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=(1, 2, 4, 4))
    with pytest.raises(StateDictMismatchError, match="post_quant_conv/kernel"):
        WanVAECodec(str(dst), fps=8.0, config=other).weights


def test_mismatches_are_named(reference, pipeline_root):
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    del state["decoder.up_blocks.1.upsampler.time_conv.bias"]
    state["encoder.mid_block.attentions.0.norm.gamma"] = np.ones((32, 1, 1, 1), np.float32)
    with pytest.raises(
        StateDictMismatchError,
        match=r"(?s)1 missing: decoder\.up_blocks\.1\."
        r"upsampler\.time_conv\.bias.*mis-shaped: encoder\.mid_block\.attentions"
        r"\.0\.norm\.gamma \(32, 1, 1, 1\) \(expected \(32, 1, 1\)\)",
    ):
        wan_vae_weights.read_vae(state, TINY)
    with pytest.raises(ValueError, match=r"base_dim=8 \(expected 160\)"):  # config.json checked
        WanVAECodec(str(pipeline_root), fps=8.0).weights


def test_published_geometry_without_reading():
    config = base_config()
    config.codecs.video.update(name="wan2.2", path="")
    config.data.fps = 24.0
    codec = make_video_codec(config)  # nothing is read: the path is only used on first encode
    assert (codec.latent_channels, codec.latent_rate) == (48, 6.0)
    assert codec.latent_shape(121, 704, 1280) == (31, 44, 80)
    np.testing.assert_allclose(codec.frame_times(3), [0.0, 2.5 / 24, 6.5 / 24])
    with pytest.raises(ValueError, match=r"1 \+ 4k frames of multiples of 16.*120 frames"):
        codec.latent_shape(120, 704, 1280)
    with pytest.raises(ValueError, match=r"config\.codecs\.video\.path is empty"):
        codec.encode(np.zeros((1, 1, 16, 16, 3), np.float32))


def test_published_vae_layout():
    """The codec's default architecture expects exactly the keys and shapes of diffusers'
    Wan2.2-TI2V-5B VAE, and our original-layout names are diffusers' convert_vae_22 names
    (built on the meta device: no memory)."""
    with torch.device("meta"):
        published = AutoencoderKLWan(
            base_dim=160,
            decoder_base_dim=256,
            z_dim=48,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_temporal=4,
            scale_factor_spatial=16,
        )
    want = {k: tuple(v.shape) for k, v in published.state_dict().items()}
    assert wan_vae_weights.upstream_shapes(WanVAEConfig(), "diffusers") == want
    original = wan_vae_weights.upstream_shapes(WanVAEConfig(), "original")
    assert {diffusers_from_original(k): s for k, s in original.items()} == want
