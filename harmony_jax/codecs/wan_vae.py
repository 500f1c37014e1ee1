"""The Wan2.2 VAE (diffusers `AutoencoderKLWan`, TI2V-5B's 48-channel residual variant) in linen.
The video codec built on it is `codecs/wan22.py`.

Streaming. Wan encodes a clip of 1 + 4k frames as a first frame alone, then chunks of 4 frames;
it decodes one latent frame at a time. Each causal temporal convolution prepends the last frames
of its input from the previous chunk (zeros before the first), so a chunk needs only the chunk,
never the clip: memory does not grow with the clip length. Here that history lives in the linen
collection 'cache' (written by `_history`); `encode_video` / `decode_video` run the first chunk,
then `lax.scan` over the others with the cache as carry, which makes them jittable with one
compile of the chunk body. The first chunk differs from the rest in three places (as in Wan):
the encoder's temporal downsampler passes it through, the decoder's temporal upsampler neither
convolves nor doubles it, and the decoder's shortcut keeps its last frame only.

Layout. Video is [B, F, H, W, C] (channels last); parameter names follow diffusers' module names
('encoder/down_blocks_0/resnets_1/conv1/kernel' is 'encoder.down_blocks.0.resnets.1.conv1.weight')
so `codecs.wan_vae_weights` maps them mechanically. Everything runs in float32.

"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """`AutoencoderKLWan`'s architecture with `is_residual=True`; the defaults are Wan2.2's
    (diffusers' Wan2.2-TI2V-5B `vae/config.json`)."""

    base_dim: int = 160
    decoder_base_dim: int = 256
    z_dim: int = 48
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    in_channels: int = 12  # 3 colours x patch_size^2
    out_channels: int = 12
    patch_size: int = 2

    def __post_init__(self):
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"WanVAEConfig: temporal_downsample {self.temporal_downsample} needs "
                f"one flag per downsampling level ({len(self.dim_mult) - 1})"
            )
        if self.in_channels != 3 * self.patch_size**2 or self.out_channels != self.in_channels:
            raise ValueError(
                f"WanVAEConfig: in/out_channels {self.in_channels}/"
                f"{self.out_channels} must be 3 * patch_size^2 "
                f"(patch_size={self.patch_size})"
            )

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)


# ---- building blocks


def _history(module: nn.Module, name: str, x: Array, frames: int, remember: bool = True) -> Array:
    """`x` [B, T, ...] with the last `frames` frames of the previous chunk's input in front (zeros
    before the first chunk); remembers this chunk's last `frames` for the next unless told not."""
    cache = module.variable("cache", name, jnp.zeros, (x.shape[0], frames, *x.shape[2:]), x.dtype)
    full = jnp.concatenate([cache.value, x], axis=1)  # [B, frames + T, ...]
    if remember:
        cache.value = full[:, -frames:]
    return full


class Conv3d(nn.Module):
    """Wan's CausalConv3d: 'same' padding in space; in time either causal (the history of
    `kernel[0] - 1` frames prepended) or, with `causal=False`, valid on a history the caller
    prepends (the temporal resamplers, whose history rules differ)."""

    features: int
    kernel: tuple[int, int, int] = (3, 3, 3)
    stride_t: int = 1
    causal: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kt, kh, kw = self.kernel
        if self.causal and kt > 1:
            x = _history(self, "history", x, kt - 1)
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (*self.kernel, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            (self.stride_t, 1, 1),
            [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)],
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        )
        return y + bias


class RMSNorm(nn.Module):
    """Wan's RMS_norm: x / max(||x||, 1e-12) * sqrt(C) * scale over channels (F.normalize)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
        return x / jnp.maximum(norm, 1e-12) * math.sqrt(x.shape[-1]) * scale


class ResidualBlock(nn.Module):
    out_dim: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = (
            x
            if x.shape[-1] == self.out_dim
            else Conv3d(self.out_dim, (1, 1, 1), name="conv_shortcut")(x)
        )
        x = Conv3d(self.out_dim, name="conv1")(nn.silu(RMSNorm(name="norm1")(x)))
        x = Conv3d(self.out_dim, name="conv2")(nn.silu(RMSNorm(name="norm2")(x)))
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, t, h, w, c = x.shape
        qkv = nn.Conv(3 * c, (1, 1), name="to_qkv")(RMSNorm(name="norm")(x))  # [B, T, H, W, 3C]
        q, k, v = jnp.split(qkv.reshape(b * t, h * w, 1, 3 * c), 3, axis=-1)  # [BT, HW, 1, C]
        y = jax.nn.dot_product_attention(q, k, v).reshape(b, t, h, w, c)
        return x + nn.Conv(c, (1, 1), name="proj")(y)


class MidBlock(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        dim = x.shape[-1]
        x = ResidualBlock(dim, name="resnets_0")(x)
        x = AttentionBlock(name="attentions_0")(x)
        return ResidualBlock(dim, name="resnets_1")(x)


def _avg_down(x: Array, out_dim: int, factor_t: int, factor_s: int) -> Array:
    """AvgDown3D: space/time to channels (time zero-padded in front), then the mean of each group
    of consecutive channels. [B, T, H, W, C] -> [B, T / ft, H / fs, W / fs, out_dim]."""
    b, t, h, w, c = x.shape
    pad = (-t) % factor_t
    x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
    t = (t + pad) // factor_t
    x = x.reshape(b, t, factor_t, h // factor_s, factor_s, w // factor_s, factor_s, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # [B, T', H', W', C, ft, fs, fs]
    x = x.reshape(b, t, h // factor_s, w // factor_s, out_dim, -1)
    return x.mean(axis=-1)


def _dup_up(x: Array, out_dim: int, factor_t: int, factor_s: int, first: bool) -> Array:
    """DupUp3D: channels repeated, then unfolded into time and space; the first chunk keeps only
    its last frame per input frame. [B, T, H, W, C] -> [B, T * ft, H * fs, W * fs, out_dim]."""
    b, t, h, w, c = x.shape
    x = jnp.repeat(x, out_dim * factor_t * factor_s**2 // c, axis=-1)
    x = x.reshape(b, t, h, w, out_dim, factor_t, factor_s, factor_s)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)  # [B, T, ft, H, fs, W, fs, out]
    x = x.reshape(b, t * factor_t, h * factor_s, w * factor_s, out_dim)
    return x[:, factor_t - 1 :] if first else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv per frame (padded right/bottom); with `temporal`, then a stride-2
    temporal conv over the previous chunk's last frame + this chunk (the first chunk passes)."""

    dim: int
    temporal: bool

    @nn.compact
    def __call__(self, x: Array, first: bool) -> Array:
        x = nn.Conv(self.dim, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)), name="resample")(x)
        if self.temporal:
            full = _history(self, "time_history", x, 1)
            if not first:
                x = Conv3d(self.dim, (3, 1, 1), stride_t=2, causal=False, name="time_conv")(full)
        return x


class Upsample(nn.Module):
    """With `temporal`, a causal temporal conv to 2x channels unfolded into 2x frames (skipped on
    the first chunk, whose frames the next chunk does not see); then nearest 2x + 3x3 conv."""

    dim: int
    temporal: bool

    @nn.compact
    def __call__(self, x: Array, first: bool) -> Array:
        if self.temporal:
            full = _history(self, "time_history", x, 2, remember=not first)
            if not first:
                y = Conv3d(2 * self.dim, (3, 1, 1), causal=False, name="time_conv")(full)
                b, t, h, w, _ = y.shape  # [B, T, H, W, 2C]: channel k * C + c is frame 2t + k
                x = y.reshape(b, t, h, w, 2, self.dim).transpose(0, 1, 4, 2, 3, 5)
                x = x.reshape(b, 2 * t, h, w, self.dim)
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        return nn.Conv(self.dim, (3, 3), padding=1, name="resample")(x)


class DownBlock(nn.Module):
    out_dim: int
    num_res_blocks: int
    spatial: bool
    temporal: bool

    @nn.compact
    def __call__(self, x: Array, first: bool) -> Array:
        shortcut = _avg_down(x, self.out_dim, 2 if self.temporal else 1, 2 if self.spatial else 1)
        for j in range(self.num_res_blocks):
            x = ResidualBlock(self.out_dim, name=f"resnets_{j}")(x)
        if self.spatial:
            x = Downsample(self.out_dim, self.temporal, name="downsampler")(x, first)
        return x + shortcut


class UpBlock(nn.Module):
    out_dim: int
    num_res_blocks: int
    spatial: bool
    temporal: bool

    @nn.compact
    def __call__(self, x: Array, first: bool) -> Array:
        shortcut = (
            _dup_up(x, self.out_dim, 2 if self.temporal else 1, 2, first) if self.spatial else 0.0
        )
        for j in range(self.num_res_blocks + 1):
            x = ResidualBlock(self.out_dim, name=f"resnets_{j}")(x)
        if self.spatial:
            x = Upsample(self.out_dim, self.temporal, name="upsampler")(x, first)
        return x + shortcut


class Encoder(nn.Module):
    config: WanVAEConfig

    @nn.compact
    def __call__(self, x: Array, first: bool) -> Array:
        cfg = self.config
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        x = Conv3d(dims[0], name="conv_in")(x)
        levels = len(cfg.dim_mult)
        for i, out_dim in enumerate(dims[1:]):
            down = i < levels - 1
            x = DownBlock(
                out_dim,
                cfg.num_res_blocks,
                spatial=down,
                temporal=down and cfg.temporal_downsample[i],
                name=f"down_blocks_{i}",
            )(x, first)
        x = MidBlock(name="mid_block")(x)
        return Conv3d(2 * cfg.z_dim, name="conv_out")(nn.silu(RMSNorm(name="norm_out")(x)))


class Decoder(nn.Module):
    config: WanVAEConfig

    @nn.compact
    def __call__(self, z: Array, first: bool) -> Array:
        cfg = self.config
        dims = [cfg.decoder_base_dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        x = Conv3d(dims[0], name="conv_in")(z)
        x = MidBlock(name="mid_block")(x)
        levels, temporal_up = len(cfg.dim_mult), cfg.temporal_downsample[::-1]
        for i, out_dim in enumerate(dims[1:]):
            up = i < levels - 1
            x = UpBlock(
                out_dim,
                cfg.num_res_blocks,
                spatial=up,
                temporal=up and temporal_up[i],
                name=f"up_blocks_{i}",
            )(x, first)
        return Conv3d(cfg.out_channels, name="conv_out")(nn.silu(RMSNorm(name="norm_out")(x)))


class WanVAE(nn.Module):
    """Encoder + quant convs + decoder; `encode_chunk` / `decode_chunk` run one streaming step
    (apply with mutable=['cache']); `__call__` touches every parameter, for `init`."""

    config: WanVAEConfig

    def setup(self):
        z = self.config.z_dim
        self.encoder = Encoder(self.config)
        self.quant_conv = Conv3d(2 * z, (1, 1, 1))
        self.post_quant_conv = Conv3d(z, (1, 1, 1))
        self.decoder = Decoder(self.config)

    def encode_chunk(self, x: Array, first: bool) -> Array:
        """[B, T, h', w', in_channels] patches -> [B, T / 4 (1 if first), h, w, 2 z_dim]."""
        return self.quant_conv(self.encoder(x, first))

    def decode_chunk(self, z: Array, first: bool) -> Array:
        """[B, 1, h, w, z_dim] -> [B, 1 if first else 4, h', w', out_channels] patches."""
        return self.decoder(self.post_quant_conv(z), first)

    def __call__(self, x: Array) -> Array:
        moments = self.encode_chunk(x, first=False)
        return self.decode_chunk(moments[..., : self.config.z_dim], first=False)


# ---- patches and streaming


def patchify(video: Array, p: int) -> Array:
    """[B, F, H, W, C] -> [B, F, H/p, W/p, C p p], channel c * p^2 + pw * p + ph (diffusers')."""
    b, f, h, w, c = video.shape
    x = video.reshape(b, f, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, f, h // p, w // p, c * p * p)


def unpatchify(x: Array, p: int) -> Array:
    """Inverse of `patchify`."""
    b, f, h, w, cpp = x.shape
    x = x.reshape(b, f, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, f, h * p, w * p, cpp // (p * p))


def _stream(model: WanVAE, params, method, first: Array, rest: Array) -> Array:
    """`method` on the chunk `first` [B, ...] (first=True), then scanned over `rest` [N, B, ...]
    with the cache as carry; outputs concatenated in time."""
    out, state = model.apply({"params": params}, first, True, method=method, mutable=["cache"])
    if rest.shape[0] == 0:
        return out

    def step(state, chunk):
        y, state = model.apply(
            {"params": params, **state}, chunk, False, method=method, mutable=["cache"]
        )
        return state, y

    _, ys = jax.lax.scan(step, state, rest)  # [N, B, T', ...]
    ys = jnp.swapaxes(ys, 0, 1)
    return jnp.concatenate([out, ys.reshape(ys.shape[0], -1, *ys.shape[3:])], axis=1)


def encode_video(model: WanVAE, params, video: Array) -> Array:
    """Posterior mean (un-normalised) of a clip: [B, 1 + 4k, H, W, 3] -> [B, 1 + k, h, w, z]."""
    cfg = model.config
    x = patchify(video.astype(jnp.float32), cfg.patch_size)
    b, f = x.shape[:2]
    st = cfg.temporal_stride
    rest = x[:, 1:].reshape(b, (f - 1) // st, st, *x.shape[2:]).swapaxes(0, 1)
    moments = _stream(model, params, WanVAE.encode_chunk, x[:, :1], rest)
    return moments[..., : cfg.z_dim]


def decode_video(model: WanVAE, params, z: Array) -> Array:
    """Frames of un-normalised latents: [B, 1 + k, h, w, z] -> [B, 1 + 4k, H, W, 3], clipped."""
    z = z.astype(jnp.float32)
    rest = jnp.swapaxes(z[:, 1:], 0, 1)[:, :, None]  # [k, B, 1, h, w, z]
    x = _stream(model, params, WanVAE.decode_chunk, z[:, :1], rest)
    return jnp.clip(unpatchify(x, model.config.patch_size), -1.0, 1.0)
