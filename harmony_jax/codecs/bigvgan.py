"""The BigVGAN vocoder generator (the `bigvgan` package's `BigVGAN`, v1 and v2) in linen:
log-mel frames [B, T, num_mels] -> waveform [B, T * hop] in [-1, 1].

conv_pre, then per stage a transposed-conv upsampler and the mean of `len(resblock_kernel_sizes)`
AMP blocks (dilated convs between anti-aliased Snake / SnakeBeta activations), then an
anti-aliased activation, conv_post and tanh (or a clamp, BigVGAN-v2's `use_tanh_at_final=False`).
The anti-aliasing (`Activation1d`) upsamples x2 with a Kaiser-windowed sinc filter, applies the
activation and low-passes back down x2 (alias-free-torch, as the package does without its CUDA
kernel). Weight norm is folded into plain kernels at import (`bigvgan_weights`), so every conv here
is an ordinary one. Layout is channels-last; parameter names are the package's module names
('resblocks_3/convs1_0' is 'resblocks.3.convs1.0'; 'ups_1' is 'ups.1.0').
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = ("snake", "snakebeta")
FILTER_SIZE = 12  # Activation1d's up / down kernel_size
RATIO = 2  # Activation1d's up / down ratio


@dataclasses.dataclass(frozen=True)
class BigVGANConfig:
    """The generator fields of a BigVGAN `config.json`; the defaults are MMAudio's 16 kHz
    vocoder (`mmaudio/ext/bigvgan/bigvgan_vocoder.yml`, a v1 model: tanh and a conv_post bias)."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    activation: str = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True

    def __post_init__(self):
        if self.resblock not in ("1", "2") or self.activation not in ACTIVATIONS:
            raise ValueError(
                f"BigVGANConfig: resblock must be '1' or '2' and activation one of "
                f"{ACTIVATIONS}, got {self.resblock!r}, {self.activation!r}"
            )
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes) or len(
            self.resblock_kernel_sizes
        ) != len(self.resblock_dilation_sizes):
            raise ValueError(
                f"BigVGANConfig: upsample_rates {self.upsample_rates} / kernel sizes "
                f"{self.upsample_kernel_sizes} and resblock kernel sizes "
                f"{self.resblock_kernel_sizes} / dilations "
                f"{self.resblock_dilation_sizes} must pair up"
            )

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame."""
        return math.prod(self.upsample_rates)


BIGVGAN_V2_44K = BigVGANConfig(  # nvidia/bigvgan_v2_44khz_128band_512x, MMAudio's 44.1 kHz vocoder
    num_mels=128,
    upsample_rates=(8, 4, 2, 2, 2, 2),
    upsample_kernel_sizes=(16, 8, 4, 4, 4, 4),
    use_tanh_at_final=False,
    use_bias_at_final=False,
)


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> np.ndarray:
    """float32 [kernel_size] low-pass filter with unit DC gain (alias-free-torch's
    `kaiser_sinc_filter1d`, after julius: a Kaiser-windowed sinc)."""
    half_size = kernel_size // 2
    attenuation = 2.285 * (half_size - 1) * math.pi * 4 * half_width + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = np.kaiser(kernel_size, beta)
    if kernel_size % 2 == 0:
        time = np.arange(-half_size, half_size) + 0.5
    else:
        time = np.arange(kernel_size) - half_size
    taps = 2 * cutoff * window * np.sinc(2 * cutoff * time)
    return (taps / taps.sum()).astype(np.float32)


def _depthwise(
    x: jax.Array, taps: np.ndarray, *, stride: int = 1, dilate: int = 1, pad: int = 0
) -> jax.Array:
    """The same 1-D filter on every channel of [B, T, C]: a correlation with `stride`, over the
    input with `dilate - 1` zeros stuffed between samples and then `pad` zeros on each side."""
    kernel = jnp.broadcast_to(jnp.asarray(taps)[:, None, None], (len(taps), 1, x.shape[-1]))
    return jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(stride,),
        padding=[(pad, pad)],
        lhs_dilation=(dilate,),
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=x.shape[-1],
        precision=jax.lax.Precision.HIGHEST,
    )


def upsample2(x: jax.Array) -> jax.Array:
    """[B, T, C] -> [B, 2T, C]: alias-free-torch's `UpSample1d(2, 12)` (edge padding, a strided
    transposed conv with the sinc filter x2, cropped)."""
    k = FILTER_SIZE
    pad = k // RATIO - 1
    crop_left = pad * RATIO + (k - RATIO) // 2
    crop_right = pad * RATIO + (k - RATIO + 1) // 2
    taps = kaiser_sinc_filter(0.5 / RATIO, 0.6 / RATIO, k)
    x = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)), mode="edge")
    # A transposed conv = a correlation with the flipped filter over the zero-stuffed input.
    full = _depthwise(x, RATIO * taps[::-1], dilate=RATIO, pad=k - 1)
    return full[:, crop_left : full.shape[1] - crop_right]


def downsample2(x: jax.Array) -> jax.Array:
    """[B, 2T, C] -> [B, T, C]: alias-free-torch's `DownSample1d(2, 12)` (edge padding, low-pass,
    stride 2)."""
    k = FILTER_SIZE
    x = jnp.pad(x, ((0, 0), (k // 2 - 1, k // 2), (0, 0)), mode="edge")
    return _depthwise(x, kaiser_sinc_filter(0.5 / RATIO, 0.6 / RATIO, k), stride=RATIO)


# ---- layers


class Snake(nn.Module):
    """x + sin^2(alpha x) / beta per channel (beta = alpha for Snake); log-scale parameters
    (`logscale`) are exponentiated first, as BigVGAN's `snake_logscale`."""

    with_beta: bool
    logscale: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.zeros_init() if self.logscale else nn.initializers.ones_init()
        alpha = self.param("alpha", init, (x.shape[-1],))
        beta = self.param("beta", init, (x.shape[-1],)) if self.with_beta else alpha
        if self.logscale:
            alpha, beta = jnp.exp(alpha), jnp.exp(beta)
        return x + 1.0 / (beta + 1e-9) * jnp.square(jnp.sin(x * alpha))


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample x2, Snake / SnakeBeta (submodule 'act'), downsample x2."""

    config: BigVGANConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = Snake(self.config.activation == "snakebeta", self.config.snake_logscale, name="act")
        return downsample2(act(upsample2(x)))


def _conv(
    features: int, kernel: int, dilation: int = 1, *, name: str, use_bias: bool = True
) -> nn.Conv:
    """torch's Conv1d(kernel, dilation, padding=dilation * (kernel - 1) // 2): length kept."""
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel,),
        kernel_dilation=(dilation,),
        padding=[(pad, pad)],
        use_bias=use_bias,
        precision=jax.lax.Precision.HIGHEST,
        name=name,
    )


class ConvTranspose1d(nn.Module):
    """torch's ConvTranspose1d(stride, padding=(kernel - stride) // 2): [B, T, I] -> [B, T *
    stride, O]. kernel [k, I, O] holds torch's weight [I, O, k] transposed."""

    features: int
    kernel_size: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        pad = k - 1 - (k - s) // 2  # a correlation with the flipped kernel over stuffed input
        y = jax.lax.conv_general_dilated(
            x,
            kernel[::-1].astype(x.dtype),
            window_strides=(1,),
            padding=[(pad, pad)],
            lhs_dilation=(s,),
            dimension_numbers=("NWC", "WIO", "NWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
        return y + bias


class AMPBlock(nn.Module):
    """BigVGAN's AMPBlock1 (per dilation: act, dilated conv, act, conv, residual) or AMPBlock2
    (per dilation: act, dilated conv, residual)."""

    config: BigVGANConfig
    kernel_size: int
    dilations: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        two_convs = self.config.resblock == "1"
        for j, d in enumerate(self.dilations):
            if two_convs:
                h = Activation1d(self.config, name=f"activations_{2 * j}")(x)
                h = _conv(channels, self.kernel_size, d, name=f"convs1_{j}")(h)
                h = Activation1d(self.config, name=f"activations_{2 * j + 1}")(h)
                h = _conv(channels, self.kernel_size, name=f"convs2_{j}")(h)
            else:
                h = Activation1d(self.config, name=f"activations_{j}")(x)
                h = _conv(channels, self.kernel_size, d, name=f"convs_{j}")(h)
            x = x + h
        return x


class BigVGAN(nn.Module):
    """mel [B, T, num_mels] (BigVGAN's log-mel) -> waveform [B, T * hop_length] in [-1, 1]."""

    config: BigVGANConfig

    @nn.compact
    def __call__(self, mel: jax.Array) -> jax.Array:
        c = self.config
        if mel.ndim != 3 or mel.shape[-1] != c.num_mels:
            raise ValueError(f"BigVGAN wants mel [B, T, {c.num_mels}], got {mel.shape}")
        x = _conv(c.upsample_initial_channel, 7, name="conv_pre")(mel.astype(jnp.float32))
        kernels = len(c.resblock_kernel_sizes)
        for i, (rate, size) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)):
            x = ConvTranspose1d(
                c.upsample_initial_channel // 2 ** (i + 1), size, rate, name=f"ups_{i}"
            )(x)  # [B, T * prod(rates[:i+1]), C_i]
            x = (
                sum(
                    AMPBlock(c, k, tuple(d), name=f"resblocks_{i * kernels + j}")(x)
                    for j, (k, d) in enumerate(
                        zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes)
                    )
                )
                / kernels
            )
        x = Activation1d(c, name="activation_post")(x)
        x = _conv(1, 7, name="conv_post", use_bias=c.use_bias_at_final)(x)[..., 0]  # [B, S]
        return jnp.tanh(x) if c.use_tanh_at_final else jnp.clip(x, -1.0, 1.0)
