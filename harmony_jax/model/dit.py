"""HarmonyDiT: the Wan2.2 video tower and the audio tower, joined by an interaction per layer.

Calling convention (the denoiser contract of `conditioning.py`):
    HarmonyDiT(cfg).apply(params, video, audio, t_video, t_audio, cond) -> (v_video, v_audio)
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from harmony_jax.model.blocks import DiTBlock, Head, TimeEmbedding
from harmony_jax.model.conditioning import Conditioning
from harmony_jax.model.config import ModelConfig
from harmony_jax.model.global_interaction import GlobalInteraction
from harmony_jax.model.interaction import GLDI, CrossModalGeometry, cross_modal_geometry
from harmony_jax.model.layers import MLP, dense, gelu_tanh
from harmony_jax.model.position import VideoPositionEmbedding
from harmony_jax.model.rope import sequence_angles, video_grid_angles
from harmony_jax.model.transcript import TranscriptEncoder

# model.interaction.mode -> the module after each block pair: GLDI, or the Ovi-like baseline
_INTERACTIONS = {"gldi": GLDI, "global": GlobalInteraction}

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@flax.struct.dataclass
class LayerInputs:
    """Everything a layer reads besides the two token streams; identical for every layer."""

    mod_v: jax.Array  # [B, Tv, 6, Dv]
    mod_a: jax.Array  # [B, Tr + Ta, 6, Da]
    ctx_v: jax.Array  # [B, Lt, Dv] (Lt = model.video.text_pad_to when that is set)
    ctx_v_mask: jax.Array | None  # [B, Lt]; None: every token attended (Wan's padding)
    ctx_a: jax.Array  # [B, Ls + Lc, Da]
    ctx_a_mask: jax.Array  # [B, Ls + Lc]
    angles_v: jax.Array  # [Lv, Hd_v/2] 3D RoPE of the video self-attention
    angles_a: jax.Array  # [Tr + Ta, Hd_a/2] 1D RoPE of the audio self-attention
    geo: CrossModalGeometry


class JointLayer(nn.Module):
    """Video block, audio block, then the cross-modal interaction."""

    config: ModelConfig
    num_ref: int

    @nn.compact
    def __call__(self, carry, inputs: LayerInputs):
        cfg = self.config
        x_v, x_a = carry
        kw = dict(
            eps=cfg.eps,
            implementation=cfg.attention,
            splash_blocks=cfg.splash,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
        )
        x_v = DiTBlock(cfg.video.dim, cfg.video.heads, cfg.video.ffn_dim, name="video_block", **kw)(
            x_v, inputs.mod_v, inputs.ctx_v, inputs.ctx_v_mask, inputs.angles_v
        )
        x_a = DiTBlock(cfg.audio.dim, cfg.audio.heads, cfg.audio.ffn_dim, name="audio_block", **kw)(
            x_a, inputs.mod_a, inputs.ctx_a, inputs.ctx_a_mask, inputs.angles_a
        )
        interaction = _INTERACTIONS[cfg.interaction.mode]
        x_v, x_a = interaction(cfg, self.num_ref, name="interaction")(x_v, x_a, inputs.geo)
        return (x_v, x_a), None


class HarmonyDiT(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        video: jax.Array,
        audio: jax.Array,
        t_video: jax.Array,
        t_audio: jax.Array,
        cond: Conditioning,
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        pt, ph, pw = cfg.video.patch
        b, frames, height, width, channels = video.shape  # [B, Tv, H, W, Cv]
        self._check_shapes(video, audio, t_video, t_audio)
        tv, hv, wv = frames // pt, height // ph, width // pw
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)

        # ---- video tower inputs
        x_v = rearrange(video, "b (t p) (h q) (w r) c -> b (t h w) (p q r c)", p=pt, q=ph, r=pw)
        x_v = dense(cfg.video.dim, ("channels", "embed"), name="video_patch_embed", **kw)(
            x_v.astype(cfg.dtype)
        )  # [B, Lv, Dv]
        if cfg.video.pos_embed != "none":  # absolute position: off for Wan (model/position.py)
            x_v = x_v + VideoPositionEmbedding(
                cfg.video.pos_embed, cfg.video.dim, cfg.param_dtype, name="video_pos_embed"
            )(tv, hv, wv).astype(x_v.dtype)
        temb_v, mod_v = TimeEmbedding(
            cfg.video.dim, cfg.freq_dim, name="video_time", param_dtype=cfg.param_dtype
        )(t_video[:, ::pt])
        video_text, video_text_mask = _video_context(cfg, cond)
        ctx_v = MLP(
            cfg.video.dim,
            cfg.video.dim,
            gelu_tanh,
            axes=("text_embed", "mlp"),
            name="video_text_embedder",
            **kw,
        )(video_text.astype(cfg.dtype))

        # ---- audio tower inputs: reference-voice tokens first, at timestep 0
        audio_in = dense(cfg.audio.dim, ("channels", "embed"), name="audio_in", **kw)
        x_a = audio_in(audio.astype(cfg.dtype))  # [B, Ta, Da]
        ref = cond.ref_audio
        num_ref = 0 if ref is None else ref.shape[1]
        t_a = t_audio
        if num_ref:
            x_a = jnp.concatenate([audio_in(ref.astype(cfg.dtype)), x_a], axis=1)
            t_a = jnp.concatenate([jnp.zeros((b, num_ref), t_audio.dtype), t_audio], axis=1)
        temb_a, mod_a = TimeEmbedding(
            cfg.audio.dim, cfg.freq_dim, name="audio_time", param_dtype=cfg.param_dtype
        )(t_a)
        caption = MLP(
            cfg.audio.dim,
            cfg.audio.dim,
            gelu_tanh,
            axes=("text_embed", "mlp"),
            name="audio_text_embedder",
            **kw,
        )(cond.audio_text.astype(cfg.dtype))
        speech = TranscriptEncoder(cfg.transcript, cfg.audio.dim, name="transcript")(
            cond.transcript
        )
        ctx_a = jnp.concatenate([caption, speech.astype(caption.dtype)], axis=1)
        ctx_a_mask = jnp.concatenate([cond.audio_text_mask, cond.transcript > 0], axis=1)

        inputs = LayerInputs(
            mod_v=mod_v,
            mod_a=mod_a,
            ctx_v=ctx_v,
            ctx_v_mask=video_text_mask,
            ctx_a=ctx_a,
            ctx_a_mask=ctx_a_mask,
            angles_v=jnp.asarray(
                video_grid_angles(tv, hv, wv, cfg.video.head_dim, cfg.video.rope_theta)
            ),
            angles_a=sequence_angles(
                jnp.arange(-num_ref, audio.shape[1], dtype=jnp.float32), cfg.audio.head_dim
            ),
            geo=cross_modal_geometry(cfg, cond, tv, hv * wv, audio.shape[1]),
        )
        (x_v, x_a), _ = self._layers(num_ref)((x_v, x_a), inputs)

        # ---- heads
        out_v = Head(cfg.video.dim, pt * ph * pw * channels, cfg.eps, name="video_head", **kw)(
            x_v, temb_v
        )
        out_v = rearrange(
            out_v,
            "b (t h w) (p q r c) -> b (t p) (h q) (w r) c",
            t=tv,
            h=hv,
            w=wv,
            p=pt,
            q=ph,
            r=pw,
        )
        out_a = Head(cfg.audio.dim, audio.shape[-1], cfg.eps, name="audio_head", **kw)(
            x_a[:, num_ref:], temb_a[:, num_ref:]
        )
        return out_v.astype(video.dtype), out_a.astype(audio.dtype)

    def _layers(self, num_ref: int):
        cfg = self.config
        layer = JointLayer
        if cfg.remat != "none":
            layer = nn.remat(
                JointLayer, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers
            )
        if cfg.scan_layers:
            return nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,),
                length=cfg.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, num_ref, name="layers")

        def unrolled(carry, inputs):
            for i in range(cfg.depth):
                carry, _ = layer(cfg, num_ref, name=f"layers_{i}")(carry, inputs)
            return carry, None

        return unrolled

    def _check_shapes(self, video, audio, t_video, t_audio) -> None:
        cfg = self.config
        if video.ndim != 5 or video.shape[-1] != cfg.video.in_channels:
            raise ValueError(
                f"video latents must be [B, Tv, H, W, {cfg.video.in_channels}]; got {video.shape}"
            )
        for axis, p in zip(video.shape[1:4], cfg.video.patch):
            if axis % p:
                raise ValueError(
                    f"video latents {video.shape} are not divisible by "
                    f"model.video.patch={cfg.video.patch}"
                )
        if audio.ndim != 3 or audio.shape[-1] != cfg.audio.in_channels:
            raise ValueError(
                f"audio latents must be [B, Ta, {cfg.audio.in_channels}]; got {audio.shape}"
            )
        if t_video.shape != video.shape[:2] or t_audio.shape != audio.shape[:2]:
            raise ValueError(
                f"timesteps must be per latent frame: t_video {t_video.shape} vs "
                f"video {video.shape[:2]}, t_audio {t_audio.shape} vs "
                f"audio {audio.shape[:2]}"
            )


def _video_context(cfg: ModelConfig, cond: Conditioning) -> tuple[jax.Array, jax.Array | None]:
    """(caption states, key mask) of the video tower's text cross-attention.

    With `model.video.text_pad_to` = N, Wan2.2's: the real-token states zero-padded to N tokens,
    no mask (upstream pads umT5's output to 512 with zeros and attends to all of them; the pads
    reach attention as the text embedder's image of zero). Otherwise the states and their mask."""
    n = cfg.video.text_pad_to
    if not n:
        return cond.video_text, cond.video_text_mask
    b, length, _ = cond.video_text.shape  # [B, Lt, Dt]
    if length > n:
        raise ValueError(
            f"the video caption has {length} tokens (codecs.text.max_len) but "
            f"model.video.text_pad_to={n}"
        )
    text = jnp.where(cond.video_text_mask[..., None], cond.video_text, 0.0)
    return jnp.pad(text, ((0, 0), (0, n - length), (0, 0))), None  # [B, N, Dt]


def num_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
