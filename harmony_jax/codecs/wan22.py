"""The Wan2.2 video codec (`config.codecs.video.name='wan2.2'`): pixels <-> normalised latents of
the `codecs.wan_vae` network, weights read on first use (`codecs.wan_vae_weights`).

Time. Latent 0 is frame 0 (t = 0); latent k >= 1 covers frames 4k-3 .. 4k and stands at their
mean capture time, (4k - 1.5) / fps.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax.codecs.wan_vae import WanVAE, WanVAEConfig, decode_video, encode_video
from harmony_jax.codecs.wan_vae_weights import load_vae

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jit keys on it
class WanVAECodec:
    """Pixels in [-1, 1] <-> normalised Wan2.2 VAE latents ((mean - latents_mean) / latents_std,
    as Wan's pipelines feed the DiT). Weights are read from `path` on the first encode/decode:
    a diffusers `vae/` folder (or its pipeline root), the original `Wan2.2_VAE.pth`, or the
    orbax checkpoint of `python -m harmony_jax.convert wan-vae`."""

    path: str
    fps: float
    config: WanVAEConfig = WanVAEConfig()

    @property
    def latent_channels(self) -> int:
        return self.config.z_dim

    @property
    def latent_rate(self) -> float:
        return self.fps / self.config.temporal_stride

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        st, ss = self.config.temporal_stride, self.config.spatial_stride
        if num_frames < 1 or (num_frames - 1) % st or height % ss or width % ss:
            raise ValueError(
                f"the Wan2.2 VAE encodes 1 + {st}k frames of multiples of {ss} "
                f"pixels (config.data), got {num_frames} frames of {height}x{width}"
            )
        return 1 + (num_frames - 1) // st, height // ss, width // ss

    def frame_times(self, num_latent_frames: int) -> np.ndarray:
        st = self.config.temporal_stride
        later = (st * np.arange(1, num_latent_frames) - (st - 1) / 2) / self.fps
        return np.concatenate([[0.0], later])  # [Tv]

    @functools.cached_property
    def model(self) -> WanVAE:
        return WanVAE(self.config)

    @functools.cached_property
    def weights(self) -> tuple[dict, Array, Array]:
        """(params, latents_mean [z], latents_std [z]), read from `path` on first use."""
        # First use may be inside a trace (jit, eval_shape): load and place concrete arrays.
        with jax.ensure_compile_time_eval():
            return jax.tree.map(jnp.asarray, load_vae(self.path, self.config))

    @functools.cached_property
    def _encode(self):
        def encode(weights, video):
            params, mean, std = weights
            return (encode_video(self.model, params, video) - mean) / std

        return jax.jit(encode)

    @functools.cached_property
    def _decode(self):
        def decode(weights, latents):
            params, mean, std = weights
            return decode_video(self.model, params, latents * std + mean)

        return jax.jit(decode)

    def encode(self, video: Array) -> Array:
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"WanVAECodec.encode wants video [B, F, H, W, 3], got {video.shape}")
        self.latent_shape(*video.shape[1:4])  # raises on a clip the VAE cannot stream
        return jax.lax.stop_gradient(self._encode(self.weights, video))  # [B, Tv, h, w, z]

    def decode(self, latents: Array) -> np.ndarray:
        if latents.ndim != 5 or latents.shape[-1] != self.latent_channels:
            raise ValueError(
                f"WanVAECodec.decode wants latents [B, Tv, h, w, "
                f"{self.latent_channels}], got {latents.shape}"
            )
        return np.asarray(self._decode(self.weights, latents), np.float32)  # [B, F, H, W, 3]
