"""Identity video codec for the demo world: the latents are the frames; the DiT patchifies."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class PixelCodec:
    """Latent = frame, so Cv = 3 and the latent rate is the frame rate. Frame i is the scene at
    the instant i / fps (its presentation time in the .mp4, and when a renderer samples it)."""

    fps: float
    latent_channels: int = dataclasses.field(default=3, init=False)

    @property
    def latent_rate(self) -> float:
        return float(self.fps)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        return (num_frames, height, width)

    def frame_times(self, num_latent_frames: int) -> np.ndarray:
        return np.arange(num_latent_frames, dtype=np.float64) / self.latent_rate

    def encode(self, video: jax.Array) -> jax.Array:
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"PixelCodec.encode wants video [B, F, H, W, 3], got {video.shape}")
        return video  # [B, Tv, H, W, 3]

    def decode(self, latents: jax.Array) -> np.ndarray:
        return np.clip(np.asarray(latents, np.float32), -1.0, 1.0)  # [B, F, H, W, 3]
