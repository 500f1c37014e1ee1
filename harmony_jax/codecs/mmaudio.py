"""The paper's audio codec: MMAudio's mel front end + its 1-D VAE, decoded through a BigVGAN
vocoder (`mmaudio/ext/mel_converter.py`, `ext/autoencoder/`).

Variants (`config.codecs.audio.variant`): '16k' (the default, the paper's): 80 log10-mel bands
of n_fft 1024 / hop 256, VAE 20 channels, MMAudio's own BigVGAN (`best_netG.pt`); '44k': 128
natural-log bands of n_fft 2048 / hop 512, VAE 40 channels, nvidia/bigvgan_v2_44khz_128band_512x.

Mel. MMAudio clamps the wave to [-1, 1], pads (n_fft - hop) / 2 by reflection on each side and
takes sqrt(|STFT|^2 + 1e-9) of uncentred periodic-Hann frames, so frame i is centred on sample
(i + 0.5) * hop: `mel.stft_power`'s framing, with reflection. Then Slaney mel filters, a 1e-5
floor and the log; the VAE sees it normalised by its checkpoint's per-band data mean / std.

Time. The VAE halves the frame rate (one avg-pool), so a latent frame stands for 2 * hop samples:
latent_rate = sample_rate / hop / 2 (31.25 /s at 16 kHz, 43.07 /s at 44.1 kHz), S samples give
(S // hop) // 2 latents, and latent j is centred on (j + 0.5) / latent_rate. Latents are the
posterior means, unscaled (MMAudio normalises them inside its generator, whose statistics are
not part of the VAE checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmony_jax.codecs.bigvgan import BIGVGAN_V2_44K, BigVGAN, BigVGANConfig
from harmony_jax.codecs.mel import mel_filters, stft_power
from harmony_jax.codecs.mmaudio_vae import MMAudioVAE, VAEConfig
from harmony_jax.timeline import interval_centres

MEL_FLOOR = 1e-5


@dataclasses.dataclass(frozen=True)
class Variant:
    """One MMAudio audio configuration: mel front end, VAE and vocoder architectures."""

    sample_rate: int
    n_fft: int
    hop_length: int
    log_base: float  # 10 (16 kHz: log10) or e (44.1 kHz: natural log)
    vae: VAEConfig
    vocoder: BigVGANConfig

    def __post_init__(self):
        if self.vae.n_mels != self.vocoder.num_mels:
            raise ValueError(
                f"MMAudio variant: the VAE has {self.vae.n_mels} mel bands, the "
                f"vocoder {self.vocoder.num_mels}"
            )
        if self.vocoder.hop_length != self.hop_length:
            raise ValueError(
                f"MMAudio variant: the vocoder makes {self.vocoder.hop_length} "
                f"samples a mel frame, the mel hop is {self.hop_length}"
            )

    @property
    def latent_rate(self) -> float:
        return self.sample_rate / (self.hop_length * self.vae.downsample)


VARIANTS = {
    "16k": Variant(
        16000, 1024, 256, 10.0, VAEConfig(n_mels=80, embed_dim=20, hidden_dim=384), BigVGANConfig()
    ),
    "44k": Variant(
        44100,
        2048,
        512,
        math.e,
        VAEConfig(n_mels=128, embed_dim=40, hidden_dim=512),
        BIGVGAN_V2_44K,
    ),
}


def variant_of(config: ml_collections.ConfigDict) -> Variant:
    """The `Variant` named by `config.codecs.audio.variant`."""
    name = config.codecs.audio.variant
    if name not in VARIANTS:
        raise ValueError(f"Unknown config.codecs.audio.variant={name!r}; valid: {sorted(VARIANTS)}")
    return VARIANTS[name]


def log_mel(wave: jax.Array, variant: Variant) -> jax.Array:
    """MMAudio's mel converter: wave [B, S] -> log-mel [B, S // hop, n_mels]."""
    wave = jnp.clip(wave.astype(jnp.float32), -1.0, 1.0)
    power = stft_power(wave, variant.n_fft, variant.hop_length, pad_mode="reflect")
    magnitude = jnp.sqrt(power + 1e-9)  # [B, T, n_fft // 2 + 1]
    mel = magnitude @ mel_filters(variant.sample_rate, variant.n_fft, variant.vae.n_mels)
    return jnp.log(jnp.maximum(mel, MEL_FLOOR)) / np.log(variant.log_base)  # [B, T, n_mels]


@functools.cache
def _programs(variant: Variant) -> tuple[Callable, Callable, Callable]:
    """Jitted (encode, decode to mel, vocode) of a variant, shared by all its codecs (weights are
    arguments), so a codec built anew compiles nothing it already did."""
    vae = MMAudioVAE(variant.vae)

    def encode(weights, wave):
        params, mean, std = weights
        mel = (log_mel(wave, variant) - mean) / std
        return vae.apply({"params": params}, mel, method="encode")[0]

    def decode_mel(weights, latents):
        params, mean, std = weights
        return vae.apply({"params": params}, latents, method="decode") * std + mean

    return jax.jit(encode), jax.jit(decode_mel), jax.jit(BigVGAN(variant.vocoder).apply)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jit keys on it
class MMAudioCodec:
    """Waveform [B, S] <-> MMAudio VAE latents [B, (S // hop) // 2, embed_dim]. The VAE is read
    from `path` on the first encode / decode, the vocoder from `vocoder_path` on the first decode:
    upstream checkpoints (MMAudio's v1-16.pth / v1-44.pth; a BigVGAN folder or .pt) or the orbax
    output of `python -m harmony_jax.convert mmaudio-vae` / `bigvgan`."""

    path: str
    vocoder_path: str
    variant: Variant = VARIANTS["16k"]

    @property
    def sample_rate(self) -> int:
        return self.variant.sample_rate

    @property
    def latent_channels(self) -> int:
        return self.variant.vae.embed_dim

    @property
    def latent_rate(self) -> float:
        return self.variant.latent_rate

    def num_latent_frames(self, num_samples: int) -> int:
        return num_samples // self.variant.hop_length // self.variant.vae.downsample

    def frame_times(self, num_latent_frames: int) -> np.ndarray:
        return interval_centres(num_latent_frames, self.latent_rate)

    @functools.cached_property
    def vae_weights(self) -> tuple[Any, jax.Array, jax.Array]:
        """(params, data_mean [n_mels], data_std [n_mels]), read from `path` on first use."""
        from harmony_jax.codecs.mmaudio_vae_weights import load_vae

        with jax.ensure_compile_time_eval():  # first use may be inside a trace
            return jax.tree.map(jnp.asarray, load_vae(self.path, self.variant.vae))

    @functools.cached_property
    def vocoder_weights(self) -> Any:
        """BigVGAN params, read from `vocoder_path` on first use."""
        from harmony_jax.codecs.bigvgan_weights import load_bigvgan

        with jax.ensure_compile_time_eval():
            return jax.tree.map(jnp.asarray, load_bigvgan(self.vocoder_path, self.variant.vocoder))

    def encode(self, wave: jax.Array) -> jax.Array:
        minimum = self.variant.hop_length * self.variant.vae.downsample
        if wave.ndim != 2 or wave.shape[1] < minimum:
            raise ValueError(
                f"MMAudioCodec.encode wants wave [B, S] with S >= {minimum} samples,"
                f" got {wave.shape}"
            )
        latents = _programs(self.variant)[0](self.vae_weights, wave)  # [B, T // 2, C]
        return jax.lax.stop_gradient(latents)

    def decode_mel(self, latents: jax.Array) -> jax.Array:
        """Latents [B, Ta, C] -> the VAE's log-mel [B, 2 Ta, n_mels] (what the vocoder hears)."""
        if latents.ndim != 3 or latents.shape[-1] != self.latent_channels:
            raise ValueError(
                f"MMAudioCodec wants latents [B, Ta, {self.latent_channels}], got {latents.shape}"
            )
        return _programs(self.variant)[1](self.vae_weights, latents)

    def decode(self, latents: jax.Array) -> np.ndarray:
        mel = self.decode_mel(latents)
        wave = _programs(self.variant)[2]({"params": self.vocoder_weights}, mel)  # [B, 2 Ta hop]
        return np.asarray(wave, np.float32)
