"""The conditioning every denoiser call receives, as one pytree.

The denoiser contract used by the loss and the sampler is

    denoise(video, audio, t_video, t_audio, cond) -> (v_video, v_audio)

    video    [B, Tv, H, W, Cv]  noisy video latents
    audio    [B, Ta, Ca]        noisy audio latents
    t_video  [B, Tv]            per-latent-frame timestep in [0, 1000] (1000 * sigma)
    t_audio  [B, Ta]            per-latent-frame timestep in [0, 1000]
    cond     Conditioning       below

and returns velocities with the shapes of `video` and `audio`. Timesteps are per latent frame so
a clean reference frame or a clean driving modality is expressed as timestep 0 on its frames.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Conditioning:
    video_text: jax.Array  # [B, Lt, Dt] video-caption embeddings
    video_text_mask: jax.Array  # [B, Lt] bool, True = real token
    audio_text: jax.Array  # [B, Ls, Dt] sound-caption embeddings
    audio_text_mask: jax.Array  # [B, Ls] bool
    transcript: jax.Array  # [B, Lc] int32 character ids, 0 = padding
    video_time: jax.Array  # [B, Tv] seconds at the centre of each video latent frame
    audio_time: jax.Array  # [B, Ta] seconds at the centre of each audio latent frame
    ref_audio: jax.Array | None = None  # [B, Tr, Ca] clean reference-voice latents

    @property
    def batch_size(self) -> int:
        return self.video_text.shape[0]


def concat_conditionings(conds: list[Conditioning]) -> Conditioning:
    """Stacks conditionings along the batch axis (e.g. the 3B SyncCFG call)."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *conds)
