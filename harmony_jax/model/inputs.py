"""Example denoiser inputs of a given geometry: random (tests, benchmarks) or abstract (plans)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax.model.conditioning import Conditioning
from harmony_jax.model.config import ModelConfig
from harmony_jax.timeline import interval_centres


def example_inputs(
    cfg: ModelConfig,
    *,
    batch: int,
    video_frames: int,
    height: int,
    width: int,
    audio_frames: int,
    audio_rate: float,
    text_len: int = 8,
    transcript_len: int = 8,
    ref_frames: int = 0,
    rng: jax.Array | None = None,
    abstract: bool = False,
):
    """(video, audio, t_video, t_audio, cond) of latent shapes; `abstract`: ShapeDtypeStructs."""
    shapes = dict(
        video=((batch, video_frames, height, width, cfg.video.in_channels), jnp.float32),
        audio=((batch, audio_frames, cfg.audio.in_channels), jnp.float32),
        t_video=((batch, video_frames), jnp.float32),
        t_audio=((batch, audio_frames), jnp.float32),
        video_text=((batch, text_len, cfg.text_dim), jnp.float32),
        audio_text=((batch, text_len, cfg.text_dim), jnp.float32),
        ref_audio=((batch, ref_frames, cfg.audio.in_channels), jnp.float32),
    )
    if abstract:
        arr = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}
        mask = jax.ShapeDtypeStruct((batch, text_len), jnp.bool_)
        transcript = jax.ShapeDtypeStruct((batch, transcript_len), jnp.int32)
        times = (
            jax.ShapeDtypeStruct((batch, video_frames), jnp.float32),
            jax.ShapeDtypeStruct((batch, audio_frames), jnp.float32),
        )
    else:
        keys = jax.random.split(jax.random.key(0) if rng is None else rng, len(shapes) + 1)
        arr = {k: jax.random.normal(key, s, d) for key, (k, (s, d)) in zip(keys, shapes.items())}
        for k in ("t_video", "t_audio"):
            arr[k] = jax.random.uniform(keys[-1], shapes[k][0], maxval=1000.0)
        mask = jnp.ones((batch, text_len), bool)
        transcript = jax.random.randint(
            keys[-1], (batch, transcript_len), 1, cfg.transcript.vocab_size
        )
        centres = lambda n, rate: jnp.broadcast_to(
            interval_centres(n, rate).astype(np.float32), (batch, n)
        )  # [B, n] seconds
        times = (centres(video_frames, cfg.video_latent_rate), centres(audio_frames, audio_rate))
    cond = Conditioning(
        video_text=arr["video_text"],
        video_text_mask=mask,
        audio_text=arr["audio_text"],
        audio_text_mask=mask,
        transcript=transcript,
        video_time=times[0],
        audio_time=times[1],
        ref_audio=arr["ref_audio"] if ref_frames else None,
    )
    return arr["video"], arr["audio"], arr["t_video"], arr["t_audio"], cond
