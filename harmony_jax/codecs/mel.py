"""Log-mel audio codec for the demo world: mel analysis in JAX, Griffin-Lim resynthesis on host.

Framing. Latent frame i is the Hann-windowed STFT frame centred on sample (i + 0.5) * hop, so
frame i stands for samples [i * hop, (i + 1) * hop): the waveform is zero-padded by
(n_fft - hop) / 2 on each side (librosa's centre padding, shifted by half a hop) and a clip of S
samples gives exactly S // hop frames (2 s at 16 kHz / 256 -> 125). This is librosa's
`melspectrogram(center=True)` minus its extra last frame, sampled half a hop later, which puts
the frame times at interval centres, (i + 0.5) / latent_rate, like every other codec.

Normalisation. latent = (log(max(mel_power, 1e-5)) - LOG_MEL_MEAN) / LOG_MEL_SCALE, fixed
constants measured on sounding-shapes-like audio (tones at 0.1-0.8 amplitude between silences)
with the default 16 mel bands: silence sits at (log(1e-5) + 4) / 4 = -1.9, a full-scale tone
at about +2, typical clips have mean ~0 and std ~1.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import librosa
import numpy as np

from harmony_jax.timeline import interval_centres

LOG_MEL_FLOOR = 1e-5
LOG_MEL_MEAN = -3.0
LOG_MEL_SCALE = 8.0
NNLS_ITERS = 100  # multiplicative updates of the mel -> linear power inversion in `decode`


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """float32 [n_fft // 2 + 1, n_mels], librosa's Slaney mel filters from 0 Hz to Nyquist
    (a host constant)."""
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).T


def stft_power(
    wave: jax.Array, n_fft: int, hop_length: int, pad_mode: str = "constant"
) -> jax.Array:
    """|STFT|^2 [B, S // hop, n_fft // 2 + 1] of wave [B, S] with the framing above: periodic-Hann
    frames of n_fft samples centred on (i + 0.5) * hop, the wave padded by (n_fft - hop) / 2 on
    each side (`pad_mode` as `jnp.pad`'s: zeros here, 'reflect' for MMAudio's front end)."""
    pad = (n_fft - hop_length) // 2
    num_frames = wave.shape[1] // hop_length
    padded = jnp.pad(wave.astype(jnp.float32), ((0, 0), (pad, pad)), mode=pad_mode)
    index = np.arange(num_frames)[:, None] * hop_length + np.arange(n_fft)[None, :]  # [Ta, n_fft]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = padded[:, index] * window.astype(np.float32)  # [B, Ta, n_fft]
    return jnp.abs(jnp.fft.rfft(frames, axis=-1)) ** 2


@dataclasses.dataclass(frozen=True)
class MelCodec:
    """Waveform [B, S] <-> normalised log-mel latents [B, S // hop, n_mels]."""

    sample_rate: int = 16000
    n_mels: int = 16
    n_fft: int = 1024
    hop_length: int = 256
    griffin_lim_iters: int = 32

    def __post_init__(self):
        if self.n_fft % 2 or self.hop_length % 2 or self.hop_length > self.n_fft:
            raise ValueError(
                f"MelCodec needs even n_fft >= even hop_length (config.codecs.audio), got "
                f"n_fft={self.n_fft}, hop_length={self.hop_length}"
            )

    @property
    def latent_channels(self) -> int:
        return self.n_mels

    @property
    def latent_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def _pad(self) -> int:
        return (self.n_fft - self.hop_length) // 2

    @functools.cached_property
    def _mel_basis(self) -> np.ndarray:
        return mel_filters(self.sample_rate, self.n_fft, self.n_mels)

    def _linear_power(self, mel: np.ndarray) -> np.ndarray:
        """Non-negative least-squares power spectrum [B, n_fft // 2 + 1, Ta] of mel [B, n_mels,
        Ta], by multiplicative updates from the clipped pseudo-inverse: a few matmuls, where
        librosa's mel_to_stft (NNLS by L-BFGS) took minutes on the mel frames of a young model."""
        a = self._mel_basis.T.astype(np.float64)  # [n_mels, F]
        mel = mel.astype(np.float64)
        # Values are floored relative to each clip's peak: multiplicative updates shrink the
        # unwanted bins geometrically, and denormal floats make every later matmul crawl.
        floor = 1e-12 * np.max(mel, axis=(-2, -1), keepdims=True) + 1e-30
        x = np.maximum(np.linalg.pinv(a) @ mel, floor)
        atb = a.T @ mel
        for _ in range(NNLS_ITERS):
            x = np.maximum(x * atb / (a.T @ (a @ x) + floor), floor)
        return x

    def num_latent_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length

    def frame_times(self, num_latent_frames: int) -> np.ndarray:
        return interval_centres(num_latent_frames, self.latent_rate)

    def encode(self, wave: jax.Array) -> jax.Array:
        if wave.ndim != 2 or wave.shape[1] < self.hop_length:
            raise ValueError(
                f"MelCodec.encode wants wave [B, S] with S >= hop_length="
                f"{self.hop_length}, got {wave.shape}"
            )
        power = stft_power(wave, self.n_fft, self.hop_length)  # [B, Ta, n_fft // 2 + 1]
        mel = power @ self._mel_basis  # [B, Ta, n_mels]
        return (jnp.log(jnp.maximum(mel, LOG_MEL_FLOOR)) - LOG_MEL_MEAN) / LOG_MEL_SCALE

    def decode(self, latents: jax.Array) -> np.ndarray:
        """Griffin-Lim (fixed phase seed, so decoding is deterministic) -> float32 [B, Ta * hop]."""
        latents = np.asarray(latents, np.float32)  # [B, Ta, n_mels]
        if latents.ndim != 3 or latents.shape[-1] != self.n_mels:
            raise ValueError(
                f"MelCodec.decode wants latents [B, Ta, {self.n_mels}], got {latents.shape}"
            )
        # Guided samples can leave the encoder's range; clipped to it (the floor, and the power
        # of a full-scale tone) so exp never overflows into a non-finite waveform.
        log_mel = np.clip(
            latents * LOG_MEL_SCALE + LOG_MEL_MEAN, np.log(LOG_MEL_FLOOR), 2.0 * np.log(self.n_fft)
        )
        mel = np.exp(log_mel).transpose(0, 2, 1)  # [B, n_mels, Ta]
        magnitude = np.sqrt(self._linear_power(mel))  # [B, n_fft // 2 + 1, Ta]
        wave = librosa.griffinlim(
            magnitude,
            n_iter=self.griffin_lim_iters,
            hop_length=self.hop_length,
            n_fft=self.n_fft,
            center=False,
            random_state=0,
        )  # [B, (Ta - 1) * hop + n_fft]
        num_samples = latents.shape[1] * self.hop_length
        return np.ascontiguousarray(wave[:, self._pad : self._pad + num_samples], np.float32)
