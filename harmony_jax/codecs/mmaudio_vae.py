"""MMAudio's 1-D mel VAE (`mmaudio/ext/autoencoder/vae.py`: an EDM2-style magnitude-preserving
encoder / decoder over mel frames) in linen: normalised log-mel [B, T, n_mels] <-> posterior
moments / latents at half the mel frame rate [B, T // 2, embed_dim].

Magnitude preservation (EDM2): activations are SiLU / 0.596, residual sums are
`mp_sum` (lerp at t = 0.3 rescaled to unit gain), ResNet inputs and attention q / k / v are
pixel-normalised over channels. MMAudio's `MPConv1D` normalises its weights on
`remove_weight_norm()` before inference; that is done once at import (`mmaudio_vae_weights`),
so every conv here is a plain bias-free conv. The final convs keep MMAudio's scalar
`learnable_gain` (weight x (1 + gain)). Parameter names are MMAudio's module names
('encoder/down_0/block_1/conv1' is 'encoder.down.0.block.1.conv1'). Channels-last, float32.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CLIP_ACT = 256.0  # MMAudio clamps activations to +-256 after every block
_MP_SUM_T = 0.3
_EPS = 1e-4


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """MMAudio's `VAE(data_dim, embed_dim, hidden_dim)`: ch_mult (1, 2, 4), 2 ResNet blocks a
    level, attention only in the middle (its attn_layers=[3] names no level), one x2
    downsampling after level 0. The defaults are the 16 kHz model (`VAE_16k`)."""

    n_mels: int = 80  # data_dim
    embed_dim: int = 20  # latent channels
    hidden_dim: int = 384
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    down_layers: tuple[int, ...] = (0,)

    @property
    def downsample(self) -> int:
        """Mel frames per latent frame."""
        return 2 ** len(self.down_layers)


def mp_silu(x: jax.Array) -> jax.Array:
    return jax.nn.silu(x) / 0.596


def mp_sum(a: jax.Array, b: jax.Array, t: float = _MP_SUM_T) -> jax.Array:
    return (a + t * (b - a)) / np.sqrt((1 - t) ** 2 + t**2)


def pixel_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / (eps + |x| / sqrt(n)) over `axis` (EDM2's `normalize`: unit mean square)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / (_EPS + norm / np.sqrt(x.shape[axis]))


def fold_mp_weight(weight: np.ndarray) -> np.ndarray:
    """MPConv1D.remove_weight_norm: w / (eps sqrt(n) + |w|) per output channel, n = fan-in."""
    w = np.asarray(weight, np.float64)
    fan_in = w[0].size
    norm = np.sqrt(np.sum(w * w, axis=tuple(range(1, w.ndim)), keepdims=True))
    return (w / (_EPS + norm / np.sqrt(fan_in)) / np.sqrt(fan_in)).astype(np.float32)


def _conv(features: int, kernel: int = 3, *, name: str) -> nn.Conv:
    """MPConv1D after weight normalisation: bias-free, 'same' padding kernel // 2."""
    return nn.Conv(
        features,
        (kernel,),
        padding=[(kernel // 2, kernel // 2)],
        use_bias=False,
        precision=jax.lax.Precision.HIGHEST,
        name=name,
    )


class ResnetBlock(nn.Module):
    out_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = pixel_norm(x)
        h = _conv(self.out_dim, name="conv1")(mp_silu(x))
        h = _conv(self.out_dim, name="conv2")(mp_silu(h))
        if x.shape[-1] != self.out_dim:
            x = _conv(self.out_dim, 1, name="nin_shortcut")(x)
        return mp_sum(x, h)


class AttnBlock(nn.Module):
    """Single-head self-attention over time with pixel-normalised q, k, v."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, c = x.shape
        # MMAudio's qkv channels interleave as (channel, {q, k, v}).
        qkv = pixel_norm(_conv(3 * c, 1, name="qkv")(x).reshape(b, t, c, 3), axis=2)
        q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]  # [B, T, C]
        scores = jnp.einsum("bqc,bkc->bqk", q, k, precision=jax.lax.Precision.HIGHEST)
        weights = jax.nn.softmax(scores / np.sqrt(c), axis=-1)
        h = jnp.einsum("bqk,bkc->bqc", weights, v, precision=jax.lax.Precision.HIGHEST)
        return mp_sum(x, _conv(c, 1, name="proj_out")(h))


class Downsample(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = _conv(c, 1, name="conv1")(x)
        t = x.shape[1] // 2 * 2  # avg_pool1d(2) drops an odd last frame
        x = x[:, :t].reshape(x.shape[0], t // 2, 2, c).mean(axis=2)
        return _conv(c, 1, name="conv2")(x)


class Upsample(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv(x.shape[-1], name="conv")(jnp.repeat(x, 2, axis=1))  # nearest x2


class Middle(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = ResnetBlock(c, name="block_1")(x)
        x = AttnBlock(name="attn_1")(x)
        return jnp.clip(ResnetBlock(c, name="block_2")(x), -CLIP_ACT, CLIP_ACT)


class GainConv(nn.Module):
    """The final MPConv1D, called with gain = 1 + learnable_gain (a scalar, 0 at init)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, gain: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, x.shape[-1], self.features)
        )
        return jax.lax.conv_general_dilated(
            x,
            kernel * (1.0 + gain),
            window_strides=(1,),
            padding=[(1, 1)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            precision=jax.lax.Precision.HIGHEST,
        )


class Level(nn.Module):
    """One resolution: `blocks` ResNet blocks (each output clamped), then an optional resampler."""

    out_dim: int
    blocks: int
    resample: str = ""  # '' | 'down' | 'up'

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        for j in range(self.blocks):
            h = jnp.clip(ResnetBlock(self.out_dim, name=f"block_{j}")(h), -CLIP_ACT, CLIP_ACT)
        if self.resample == "down":
            h = Downsample(name="downsample")(h)
        elif self.resample == "up":
            h = Upsample(name="upsample")(h)
        return h


class Encoder(nn.Module):
    """Normalised mel [B, T, n_mels] -> posterior moments [B, T // 2, 2 * embed_dim]."""

    config: VAEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        gain = self.param("learnable_gain", nn.initializers.zeros_init(), ())
        h = _conv(c.hidden_dim, name="conv_in")(x)
        for i, mult in enumerate(c.ch_mult):
            h = Level(
                c.hidden_dim * mult,
                c.num_res_blocks,
                "down" if i in c.down_layers else "",
                name=f"down_{i}",
            )(h)
        h = Middle(name="mid")(h)
        return GainConv(2 * c.embed_dim, name="conv_out")(mp_silu(h), gain)


class Decoder(nn.Module):
    """Latents [B, Ta, embed_dim] -> normalised mel [B, 2 Ta, n_mels]."""

    config: VAEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        c = self.config
        gain = self.param("learnable_gain", nn.initializers.zeros_init(), ())
        h = _conv(c.hidden_dim * c.ch_mult[-1], name="conv_in")(z)
        h = Middle(name="mid")(h)
        for i in reversed(range(len(c.ch_mult))):
            # MMAudio's decoder upsamples at the level above each encoder downsampling.
            h = Level(
                c.hidden_dim * c.ch_mult[i],
                c.num_res_blocks + 1,
                "up" if i - 1 in c.down_layers else "",
                name=f"up_{i}",
            )(h)
        return GainConv(c.n_mels, name="conv_out")(mp_silu(h), gain)


class MMAudioVAE(nn.Module):
    """`encode`: normalised mel -> (mean, logvar) [B, T // 2, embed_dim] each; `decode`: latents
    -> normalised mel. Normalisation by the data mean / std is the codec's (MMAudio's buffers)."""

    config: VAEConfig

    def setup(self):
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def encode(self, mel: jax.Array) -> tuple[jax.Array, jax.Array]:
        moments = self.encoder(mel)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)

    def __call__(self, mel: jax.Array) -> jax.Array:
        """Mel -> its reconstruction through the posterior mean (init and training)."""
        return self.decode(self.encode(mel)[0])
