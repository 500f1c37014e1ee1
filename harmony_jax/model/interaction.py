"""Global-Local Decoupled Interaction (GLDI) between the video and audio towers.

Local: A2V (video queries, audio keys) and V2A (audio queries, video keys) cross-attention
restricted to a temporal band |time_q - time_k| <= window, with 1D RoPE on one common time axis.
Global: reference-audio tokens attend to all video tokens (style), so the next audio
self-attention sees their updated state (paper eq. 7). Every output projection starts at zero.
`mode='global'` replaces all of it with one unmasked bidirectional cross-attention (Ovi-like).
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from harmony_jax.model.attention import Attention, uses_splash
from harmony_jax.model.conditioning import Conditioning
from harmony_jax.model.config import ModelConfig
from harmony_jax.model.layers import LayerNorm32
from harmony_jax.model.rope import sequence_angles
from harmony_jax.model.splash import BandKernel, SplashBlocks, band_kernel, block_sizes


@flax.struct.dataclass
class CrossModalGeometry:
    """Per-call, layer-independent tensors of the interaction (computed once, broadcast in scan)."""

    video_angles: jax.Array  # [B, Lv, Hd_v/2] rotary angles of video tokens on the common axis
    audio_angles: jax.Array  # [B, Ta, Hd_a/2] same for the (noisy) audio tokens, video head dim
    audio_angles_a: jax.Array  # [B, Ta, Hd_a/2] audio tokens, audio head dim
    video_angles_a: jax.Array  # [B, Lv, Hd_a/2] video tokens, audio head dim
    a2v_mask: jax.Array | None  # [B, 1, Lv, Ta] bool, None = unmasked
    v2a_mask: jax.Array | None  # [B, 1, Ta, Lv] bool
    # the two bands as the splash kernel's block maps (`model.attention` splash only)
    a2v_splash: BandKernel | None = None
    v2a_splash: BandKernel | None = None


def band_mask(q_time: jax.Array, k_time: jax.Array, window_seconds: float) -> jax.Array:
    """[B, Tq, Tk] True where |q_time - k_time| <= window (times in seconds, [B, Tq] / [B, Tk])."""
    # A tiny slack keeps boundary pairs (exactly `window` apart) in despite float rounding.
    return jnp.abs(q_time[:, :, None] - k_time[:, None, :]) <= window_seconds * (1 + 1e-6)


def cross_modal_geometry(
    cfg: ModelConfig, cond: Conditioning, frames: int, tokens_per_frame: int, audio_frames: int
) -> CrossModalGeometry:
    """Cross-modal RoPE angles and band masks from the per-latent-frame times in seconds.

    Positions are time x video latent rate (`rope_align`) or raw frame indices (the ablation).
    The band always uses real time: the local window is a statement about synchrony. Under the
    splash kernel the bands' block maps are built here too, once for all layers, with
    `model.splash.band_block` tiles along the audio axis.
    """
    pt = cfg.video.patch[0]
    v_time = cond.video_time[:, ::pt]  # [B, Tv]
    a_time = cond.audio_time  # [B, Ta]
    if cfg.interaction.rope_align:
        v_pos, a_pos = v_time * cfg.video_latent_rate, a_time * cfg.video_latent_rate
    else:
        b = v_time.shape[0]
        v_pos = jnp.broadcast_to(jnp.arange(frames, dtype=jnp.float32), (b, frames))
        a_pos = jnp.broadcast_to(jnp.arange(audio_frames, dtype=jnp.float32), (b, audio_frames))
    v_pos_tokens = jnp.repeat(v_pos, tokens_per_frame, axis=1)  # [B, Lv]
    hd_v, hd_a = cfg.video.head_dim, cfg.audio.head_dim
    a2v = v2a = a2v_splash = v2a_splash = None
    if cfg.interaction.mode == "gldi":
        frame_mask = band_mask(v_time, a_time, cfg.interaction.window / cfg.video_latent_rate)
        a2v = jnp.repeat(frame_mask, tokens_per_frame, axis=1)[:, None]  # [B, 1, Lv, Ta]
        v2a = jnp.swapaxes(a2v, -1, -2)  # [B, 1, Ta, Lv]
        if uses_splash(cfg.attention):
            lv = a2v.shape[2]
            a2v_splash = band_kernel(a2v, block_sizes(cfg.splash, lv, audio_frames, band_axis="kv"))
            v2a_splash = band_kernel(v2a, block_sizes(cfg.splash, audio_frames, lv, band_axis="q"))
    return CrossModalGeometry(
        video_angles=sequence_angles(v_pos_tokens, hd_v),
        audio_angles=sequence_angles(a_pos, hd_v),
        audio_angles_a=sequence_angles(a_pos, hd_a),
        video_angles_a=sequence_angles(v_pos_tokens, hd_a),
        a2v_mask=a2v,
        v2a_mask=v2a,
        a2v_splash=a2v_splash,
        v2a_splash=v2a_splash,
    )


class CrossModalAttention(nn.Module):
    """x + Attn(LN(x), LN(context)) with a zero-initialised output projection."""

    dim: int
    heads: int
    eps: float
    implementation: str
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    splash_blocks: SplashBlocks = SplashBlocks()

    @nn.compact
    def __call__(self, x, context, *, q_angles=None, k_angles=None, mask=None, splash_band=None):
        q_in = LayerNorm32(self.eps, affine=True, param_dtype=self.param_dtype, name="norm_q_in")(x)
        kv_in = LayerNorm32(self.eps, affine=True, param_dtype=self.param_dtype, name="norm_kv_in")(
            context
        )
        y = Attention(
            self.dim,
            self.heads,
            self.eps,
            zero_out=True,
            implementation=self.implementation,
            splash_blocks=self.splash_blocks,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attn",
        )(
            q_in.astype(self.dtype),
            kv_in.astype(self.dtype),
            q_angles=q_angles,
            k_angles=k_angles,
            mask=mask,
            splash_band=splash_band,
        )
        return x + y.astype(x.dtype)


class Interaction(nn.Module):
    """One GLDI (or global-baseline) module, placed after each (video block, audio block) pair."""

    config: ModelConfig
    num_ref: int  # reference-audio tokens at the front of the audio sequence

    @nn.compact
    def __call__(self, x_v: jax.Array, x_a: jax.Array, geo: CrossModalGeometry):
        # x_v [B, Lv, Dv]; x_a [B, Tr + Ta, Da]
        cfg = self.config
        kw = dict(
            eps=cfg.eps,
            implementation=cfg.attention,
            splash_blocks=cfg.splash,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
        )
        to_video = CrossModalAttention(cfg.video.dim, cfg.video.heads, name="a2v", **kw)
        to_audio = CrossModalAttention(cfg.audio.dim, cfg.audio.heads, name="v2a", **kw)
        ref, audio = x_a[:, : self.num_ref], x_a[:, self.num_ref :]
        new_v = to_video(
            x_v,
            audio,
            q_angles=geo.video_angles,
            k_angles=geo.audio_angles,
            mask=geo.a2v_mask,
            splash_band=geo.a2v_splash,
        )
        new_a = to_audio(
            audio,
            x_v,
            q_angles=geo.audio_angles_a,
            k_angles=geo.video_angles_a,
            mask=geo.v2a_mask,
            splash_band=geo.v2a_splash,
        )
        if cfg.interaction.mode == "gldi":
            # Global style path: timbre tokens read the whole video, no band, no positions.
            ref = CrossModalAttention(cfg.audio.dim, cfg.audio.heads, name="global", **kw)(ref, x_v)
        return new_v, jnp.concatenate([ref, new_a], axis=1)
