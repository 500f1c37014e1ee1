"""Our video tower vs diffusers' WanTransformer3DModel with the same random weights (Wan2.2
TI2V-style: per-token timesteps, first latent frame at t=0), loaded through our importer from
checkpoint files in the diffusers layout (sharded, with an index) and the original Wan layout."""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import harmony_5b
from harmony_jax.convert.wan import (
    abstract_dit,
    check_source_config,
    export_wan,
    import_wan,
    tower_spec,
    upstream_shapes,
)
from harmony_jax.model import HarmonyDiT, ModelConfig
from harmony_jax.model.config import (
    InteractionConfig,
    TowerConfig,
    TranscriptConfig,
    VideoTowerConfig,
)
from harmony_jax.model.inputs import example_inputs
from harmony_jax.weights.state_dict import read_safetensors

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

HEADS, HEAD_DIM, DEPTH, FFN, CHANNELS, TEXT_DIM, FREQ_DIM = 2, 24, 2, 64, 8, 16, 256
FRAMES, HEIGHT, WIDTH = 3, 4, 6  # latent grid 3 x 2 x 3 tokens: h != w catches an axis swap
T_VIDEO = np.array([[0.0, 500.0, 500.0], [0.0, 250.0, 900.0]], np.float32)  # [B, Tv], TI2V
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    """diffusers' model with every parameter randomised (norm scales off 1, biases non-zero)."""
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=CHANNELS,
        out_channels=CHANNELS,
        text_dim=TEXT_DIM,
        freq_dim=FREQ_DIM,
        ffn_dim=FFN,
        num_layers=DEPTH,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def ours():
    """A matching ModelConfig (tiny audio tower), freshly initialised params, the apply fn and
    inputs shared with the reference."""
    cfg = ModelConfig(
        depth=DEPTH,
        text_dim=TEXT_DIM,
        freq_dim=FREQ_DIM,
        eps=1e-6,
        video=VideoTowerConfig(
            dim=HEADS * HEAD_DIM, heads=HEADS, ffn_dim=FFN, in_channels=CHANNELS, patch=(1, 2, 2)
        ),
        audio=TowerConfig(dim=16, heads=2, ffn_dim=32, in_channels=4),
        transcript=TranscriptConfig(vocab_size=32, dim=16, conv_layers=1, conv_mult=2, max_len=8),
        interaction=InteractionConfig(),
        video_latent_rate=4.0,
    )
    video, audio, _, t_audio, cond = example_inputs(
        cfg,
        batch=2,
        video_frames=FRAMES,
        height=HEIGHT,
        width=WIDTH,
        audio_frames=8,
        audio_rate=16.0,
        text_len=5,
        rng=jax.random.key(3),
    )
    model = HarmonyDiT(cfg)
    t_video = jax.numpy.asarray(T_VIDEO)
    params = {
        "dit": nn.meta.unbox(
            jax.jit(model.init)(jax.random.key(1), video, audio, t_video, t_audio, cond)["params"]
        )
    }
    apply = jax.jit(
        lambda p: model.apply({"params": p["dit"]}, video, audio, t_video, t_audio, cond)[0]
    )
    # the video output of a model of config c for conditioning k
    run = lambda c, p, k: HarmonyDiT(c).apply(
        {"params": p["dit"]}, video, audio, t_video, t_audio, k
    )[0]
    return cfg, params, apply, (video, cond), run


def reference_output(model, video, cond_or_text) -> np.ndarray:
    """diffusers' prediction as [B, Tv, H, W, C], timesteps expanded from frames to tokens;
    the text states are a conditioning's, unmasked, or given [B, L, Dt]."""
    text = getattr(cond_or_text, "video_text", cond_or_text)
    tokens_per_frame = (HEIGHT // 2) * (WIDTH // 2)
    with torch.no_grad():
        out = model(
            hidden_states=torch.from_numpy(np.array(video).transpose(0, 4, 1, 2, 3)),
            timestep=torch.from_numpy(np.repeat(T_VIDEO, tokens_per_frame, axis=1)),
            encoder_hidden_states=torch.from_numpy(np.array(text)),
            return_dict=False,
        )[0]
    return out.numpy().transpose(0, 2, 3, 4, 1)


def rel_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_diffusers_layout_sharded_parity(reference, ours, tmp_path):
    cfg, init, apply, (video, cond), _ = ours
    reference.save_pretrained(tmp_path / "transformer", max_shard_size="150KB")  # pipeline root
    index = json.loads(
        (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text()
    )
    assert len(set(index["weight_map"].values())) >= 2
    params = import_wan(read_safetensors(tmp_path, subfolder="transformer"), init, cfg)
    err = rel_err(apply(params), reference_output(reference, video, cond))
    print(f"diffusers layout: max relative error {err:.2e}")
    assert err < TOLERANCE
    check_source_config(str(tmp_path), cfg)  # the config.json diffusers wrote agrees
    with pytest.raises(ValueError, match=r"num_layers=2 but --config has model\.depth=3"):
        check_source_config(str(tmp_path), dataclasses.replace(cfg, depth=3))


def test_original_layout_parity(reference, ours, tmp_path):
    cfg, init, apply, (video, cond), _ = ours
    want = {k: v.numpy() for k, v in reference.state_dict().items()}
    original = export_wan(import_wan(want, init, cfg), cfg, "original")
    # diffusers' own single-file converter reads our original-layout keys back to its model's
    back = convert_wan_transformer_to_diffusers(
        {k: torch.from_numpy(v) for k, v in original.items()}
    )
    assert sorted(back) == sorted(want)
    for k, v in back.items():
        np.testing.assert_array_equal(v.numpy(), want[k], err_msg=k)
    save_file(original, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    params = import_wan(read_safetensors(tmp_path), init, cfg)
    err = rel_err(apply(params), reference_output(reference, video, cond))
    print(f"original layout: max relative error {err:.2e}")
    assert err < TOLERANCE


def test_short_prompts_are_padded_as_upstream(reference, ours):
    """Prompts of 2 and 4 real tokens out of 5 (the rest padding, its states garbage): with
    `text_pad_to`, our tower computes what diffusers computes for the pipeline's context, the
    real-token states zero-padded to that length (512 in Wan2.2) and attended unmasked."""
    cfg, init, _, (video, cond), run = ours
    params = import_wan({k: v.numpy() for k, v in reference.state_dict().items()}, init, cfg)
    lengths, pad_to = np.array([2, 4]), 512  # Wan2.2
    short = cond.replace(video_text_mask=np.arange(5)[None] < lengths[:, None])
    upstream_text = np.zeros((2, pad_to, TEXT_DIM), np.float32)  # [B, N, Dt], as the pipeline
    for i, n in enumerate(lengths):
        upstream_text[i, :n] = np.asarray(cond.video_text)[i, :n]
    want = reference_output(reference, video, upstream_text)
    padded = dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, text_pad_to=pad_to))
    err = rel_err(run(padded, params, short), want)
    masked = rel_err(run(cfg, params, short), want)
    print(
        f"short prompts: max relative error {err:.2e} zero-padded to {pad_to} and attended, "
        f"{masked:.2e} masked"
    )
    assert err < TOLERANCE
    assert masked > 100 * TOLERANCE  # what masking the pads computes is not upstream's
    with pytest.raises(ValueError, match="text_pad_to=4"):
        run(
            dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, text_pad_to=4)),
            params,
            short,
        )


def test_paper_config_matches_the_published_5b_layout():
    """configs/harmony_5b.py's video tower expects exactly the keys and shapes of diffusers'
    Wan2.2-TI2V-5B transformer (built on the meta device: no memory)."""
    with torch.device("meta"):
        published = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=24,
            attention_head_dim=128,
            in_channels=48,
            out_channels=48,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=14336,
            num_layers=30,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
        )
    cfg = ModelConfig.from_config(harmony_5b.get_config().model, video_latent_rate=6.0)
    expected = upstream_shapes(tower_spec(abstract_dit(cfg)), cfg.video.patch, "diffusers")
    assert expected == {k: tuple(v.shape) for k, v in published.state_dict().items()}
    assert cfg.video.text_pad_to == 512  # Wan2.2's caption padding
