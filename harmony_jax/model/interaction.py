"""Global-Local Decoupled Interaction (GLDI) between the video and audio towers.

Local: A2V (video queries, audio keys) and V2A (audio queries, video keys) cross-attention
restricted to a temporal band |time_q - time_k| <= window, with 1D RoPE on one common time axis.
Global: reference-audio tokens attend to all video tokens (style), so the next audio
self-attention sees their updated state (paper eq. 7). Every output projection starts at zero.
The Ovi-like baseline (`mode='global'`, unmasked A2V / V2A and no reference path) is
`model/global_interaction.py`; `model/dit.py` picks one of the two once, by mode.
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

    # Rotary angles on the common time axis, named by the attention they feed (A2V: video
    # queries at the video head dim; V2A: audio queries at the audio head dim).
    a2v_q: jax.Array  # [B, Lv, Hd_v/2] video tokens
    a2v_k: jax.Array  # [B, Ta, Hd_v/2] (noisy) audio tokens
    v2a_q: jax.Array  # [B, Ta, Hd_a/2] audio tokens
    v2a_k: jax.Array  # [B, Lv, Hd_a/2] video tokens
    a2v_mask: jax.Array | None  # [B, 1, Lv, Ta] bool band, None = unmasked (mode 'global')
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
        a2v_q=sequence_angles(v_pos_tokens, hd_v),
        a2v_k=sequence_angles(a_pos, hd_v),
        v2a_q=sequence_angles(a_pos, hd_a),
        v2a_k=sequence_angles(v_pos_tokens, hd_a),
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


def cross_attention(cfg: ModelConfig, queries: str, name: str) -> CrossModalAttention:
    """A cross-attention whose queries are the `queries` tower's tokens ('video' or 'audio')."""
    tower = cfg.video if queries == "video" else cfg.audio
    return CrossModalAttention(
        tower.dim,
        tower.heads,
        eps=cfg.eps,
        implementation=cfg.attention,
        splash_blocks=cfg.splash,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        name=name,
    )


def cross_attend(
    cfg: ModelConfig, x_v: jax.Array, audio: jax.Array, geo: CrossModalGeometry
) -> tuple[jax.Array, jax.Array]:
    """A2V (video reads audio) and V2A (audio reads video) on the common time axis, inside the
    band of `geo` (none under mode 'global'). Called from a module's compact `__call__`, so the
    two attentions are that module's 'a2v' and 'v2a'."""
    a2v, v2a = cross_attention(cfg, "video", "a2v"), cross_attention(cfg, "audio", "v2a")
    new_v = a2v(x_v, audio, q_angles=geo.a2v_q, k_angles=geo.a2v_k, mask=geo.a2v_mask,
                splash_band=geo.a2v_splash)  # fmt: skip
    new_a = v2a(audio, x_v, q_angles=geo.v2a_q, k_angles=geo.v2a_k, mask=geo.v2a_mask,
                splash_band=geo.v2a_splash)  # fmt: skip
    return new_v, new_a


class GLDI(nn.Module):
    """One Global-Local Decoupled Interaction, after each (video block, audio block) pair:
    banded A2V / V2A (local), then the reference-audio tokens read the whole video (global)."""

    config: ModelConfig
    num_ref: int  # reference-audio tokens at the front of the audio sequence

    @nn.compact
    def __call__(self, x_v: jax.Array, x_a: jax.Array, geo: CrossModalGeometry):
        # x_v [B, Lv, Dv]; x_a [B, Tr + Ta, Da]
        cfg = self.config
        ref, audio = x_a[:, : self.num_ref], x_a[:, self.num_ref :]
        new_v, new_a = cross_attend(cfg, x_v, audio, geo)
        # Global style path: timbre tokens read the whole video, no band, no positions.
        ref = cross_attention(cfg, "audio", "global")(ref, x_v)
        return new_v, jnp.concatenate([ref, new_a], axis=1)
