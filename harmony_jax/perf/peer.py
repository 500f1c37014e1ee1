"""Our video tower against diffusers' WanTransformer3DModel (PyTorch) on the same shapes and the
same weights: diffusers' randomly initialised model, imported with `convert.wan.read_wan` as the
parity test imports it, so the two compute the same function (the max relative difference of
their outputs is reported beside the times).

`VideoTower` is HarmonyDiT's video path alone, from the same submodules under the same parameter
names: without the audio tower and the interaction it is the Wan2.2 DiT, layer for layer.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import traverse_util

from harmony_jax.convert.wan import abstract_dit, read_wan, tower_spec
from harmony_jax.model import ModelConfig
from harmony_jax.model.blocks import DiTBlock, Head, TimeEmbedding
from harmony_jax.model.config import (
    InteractionConfig,
    TowerConfig,
    TranscriptConfig,
    VideoTowerConfig,
)
from harmony_jax.model.layers import MLP, dense, gelu_tanh
from harmony_jax.model.rope import video_grid_angles
from harmony_jax.perf.measure import format_table, interleaved_medians

HEADERS = (
    "timesteps",
    "video tokens",
    "ours ms",
    "diffusers ms",
    "ours / diffusers",
    "max rel diff",
)


class _VideoLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, mod, context, angles):
        cfg = self.config
        x = DiTBlock(
            cfg.video.dim,
            cfg.video.heads,
            cfg.video.ffn_dim,
            eps=cfg.eps,
            implementation=cfg.attention,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="video_block",
        )(x, mod, context, None, angles)
        return x, None


class VideoTower(nn.Module):
    """(video latents [B, Tv, H, W, C], per-frame timesteps [B, Tv], text [B, Lt, text_dim]) ->
    velocity [B, Tv, H, W, C], as HarmonyDiT's video branch computes it without the audio."""

    config: ModelConfig

    @nn.compact
    def __call__(self, video: jax.Array, t_video: jax.Array, text: jax.Array) -> jax.Array:
        cfg = self.config
        pt, ph, pw = cfg.video.patch
        _, frames, height, width, _ = video.shape
        tv, hv, wv = frames // pt, height // ph, width // pw
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        x = rearrange(video, "b (t p) (h q) (w r) c -> b (t h w) (p q r c)", p=pt, q=ph, r=pw)
        x = dense(cfg.video.dim, ("channels", "embed"), name="video_patch_embed", **kw)(
            x.astype(cfg.dtype)
        )
        temb, mod = TimeEmbedding(
            cfg.video.dim, cfg.freq_dim, name="video_time", param_dtype=cfg.param_dtype
        )(t_video[:, ::pt])
        context = MLP(
            cfg.video.dim,
            cfg.video.dim,
            gelu_tanh,
            axes=("text_embed", "mlp"),
            name="video_text_embedder",
            **kw,
        )(text.astype(cfg.dtype))
        angles = jnp.asarray(
            video_grid_angles(tv, hv, wv, cfg.video.head_dim, cfg.video.rope_theta)
        )
        layers = nn.scan(
            _VideoLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast,) * 3,
            length=cfg.depth,
        )(cfg, name="layers")
        x, _ = layers(x, mod, context, angles)
        out = Head(cfg.video.dim, pt * ph * pw * video.shape[-1], cfg.eps, name="video_head", **kw)(
            x, temb
        )
        out = rearrange(
            out, "b (t h w) (p q r c) -> b (t p) (h q) (w r) c", t=tv, h=hv, w=wv, p=pt, q=ph, r=pw
        )
        return out.astype(video.dtype)


@dataclasses.dataclass(frozen=True)
class PeerShape:
    """A Wan tower and the latent clip it runs on."""

    heads: int
    head_dim: int
    depth: int
    ffn_dim: int
    channels: int
    text_dim: int
    frames: int  # latent frames
    height: int  # latent rows
    width: int  # latent columns
    text_len: int
    batch: int = 1

    @property
    def tokens(self) -> int:
        return self.frames * (self.height // 2) * (self.width // 2)


QUICK = PeerShape(
    heads=2,
    head_dim=64,
    depth=2,
    ffn_dim=512,
    channels=48,
    text_dim=64,
    frames=5,
    height=16,
    width=16,
    text_len=32,
)
# Wan2.2-TI2V-5B on its 480p clip: 81 frames at 480x832 -> 21 x 30 x 52 latents, 8,190 tokens.
WAN22_5B_480P = PeerShape(
    heads=24,
    head_dim=128,
    depth=30,
    ffn_dim=14336,
    channels=48,
    text_dim=4096,
    frames=21,
    height=30,
    width=52,
    text_len=512,
)


@dataclasses.dataclass(frozen=True)
class PeerRow:
    timesteps: str  # 'per token (TI2V)' or 'one per sample'
    tokens: int
    ours_seconds: float
    theirs_seconds: float
    max_rel_diff: float


def model_config(shape: PeerShape, dtype: str, attention: str) -> ModelConfig:
    """Our config of the same tower (a token audio tower, which VideoTower never builds)."""
    dim = shape.heads * shape.head_dim
    return ModelConfig(
        depth=shape.depth,
        text_dim=shape.text_dim,
        freq_dim=256,
        eps=1e-6,
        video=VideoTowerConfig(
            dim=dim,
            heads=shape.heads,
            ffn_dim=shape.ffn_dim,
            in_channels=shape.channels,
            patch=(1, 2, 2),
        ),
        audio=TowerConfig(dim=16, heads=2, ffn_dim=32, in_channels=4),
        transcript=TranscriptConfig(vocab_size=32, dim=16, conv_layers=1, conv_mult=2, max_len=8),
        interaction=InteractionConfig(),
        video_latent_rate=6.0,
        attention=attention,
        dtype=jnp.dtype(dtype),
        param_dtype=jnp.dtype(dtype),
    )


def measure_peer(
    shape: PeerShape = QUICK, *, dtype: str | None = None, runs: int = 3, warmup: int = 1
) -> list[PeerRow]:
    """Forward times of both towers with TI2V per-token timesteps (first latent frame at t=0, as
    Wan2.2's TI2V pipeline calls diffusers) and with one timestep per sample.

    Both sides in `dtype` (weights too: inference weights): float32 on CPU, bfloat16 on GPU by
    default; diffusers on CUDA when torch sees a GPU. Our attention is 'auto' (cuDNN on GPU).
    """
    import torch
    from diffusers import WanTransformer3DModel

    gpu = jax.default_backend() == "gpu"
    dtype = dtype or ("bfloat16" if gpu else "float32")
    device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    reference = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=shape.heads,
        attention_head_dim=shape.head_dim,
        in_channels=shape.channels,
        out_channels=shape.channels,
        text_dim=shape.text_dim,
        freq_dim=256,
        ffn_dim=shape.ffn_dim,
        num_layers=shape.depth,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
    ).eval()
    cfg = model_config(shape, dtype, "auto")
    state = {k: v.float().numpy() for k, v in reference.state_dict().items()}
    tower = read_wan(state, tower_spec(abstract_dit(cfg)), cfg.video.patch)
    params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in tower.items()}, sep="/")
    del state, tower
    reference = reference.to(device)
    if dtype != "float32":  # as diffusers' from_pretrained(torch_dtype=...) casts: some stay f32
        keep = set(reference._keep_in_fp32_modules or ())
        for name, p in reference.named_parameters():
            p.data = p.data.to(torch.float32 if keep & set(name.split(".")) else torch_dtype)

    rng = np.random.default_rng(0)
    b = shape.batch
    video = rng.standard_normal(
        (b, shape.frames, shape.height, shape.width, shape.channels), np.float32
    )
    text = rng.standard_normal((b, shape.text_len, shape.text_dim), np.float32)
    ours = jax.jit(lambda p, v, t, c: VideoTower(cfg).apply({"params": p}, v, t, c))
    per_frame = np.full((b, shape.frames), 500.0, np.float32)
    per_frame[:, 0] = 0.0  # TI2V: the reference frame is clean
    tokens_per_frame = shape.tokens // shape.frames
    to_torch = lambda x: torch.from_numpy(x).to(device=device, dtype=torch_dtype)
    theirs_video = to_torch(video.transpose(0, 4, 1, 2, 3))
    theirs_text = to_torch(text)

    def theirs(timestep):
        with torch.inference_mode():
            out = reference(
                hidden_states=theirs_video,
                timestep=timestep,
                encoder_hidden_states=theirs_text,
                return_dict=False,
            )[0]
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    rows = []
    for name, t_frames, t_theirs in (
        ("per token (TI2V)", per_frame, np.repeat(per_frame, tokens_per_frame, axis=1)),
        (
            "one per sample",
            np.full((b, shape.frames), 500.0, np.float32),
            np.full((b,), 500.0, np.float32),
        ),
    ):
        args = (params, jnp.asarray(video, dtype), jnp.asarray(t_frames), jnp.asarray(text, dtype))
        t_torch = torch.from_numpy(t_theirs).to(device)
        want = theirs(t_torch).float().cpu().numpy().transpose(0, 2, 3, 4, 1)
        got = np.asarray(ours(*args), np.float32)
        times = interleaved_medians(
            {
                "ours": lambda args=args: ours(*args),
                "theirs": lambda t=t_torch: theirs(t),
            },
            runs,
            warmup,
        )
        rows.append(
            PeerRow(
                timesteps=name,
                tokens=shape.tokens,
                ours_seconds=times["ours"],
                theirs_seconds=times["theirs"],
                max_rel_diff=float(np.max(np.abs(got - want)) / np.max(np.abs(want))),
            )
        )
    return rows


def peer_table(rows: list[PeerRow]) -> str:
    return format_table(
        HEADERS,
        [
            (
                r.timesteps,
                r.tokens,
                1e3 * r.ours_seconds,
                1e3 * r.theirs_seconds,
                r.ours_seconds / r.theirs_seconds,
                r.max_rel_diff,
            )
            for r in rows
        ],
    )
