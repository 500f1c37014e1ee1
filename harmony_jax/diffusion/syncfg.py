"""SyncCFG (paper eq. 9-10): each modality is guided away from a "driven" prediction whose
partner modality carries no synchrony information:

    v_vid = d_v + s_v (j_v - d_v)    d_v: video driven by the silent-audio latent (t_a = 0)
    v_aud = d_a + s_a (j_a - d_a)    d_a: audio driven by a static video (t_v = 0)

where j_v, j_a is the joint prediction. The passes of one step go through the denoiser as ONE
batched call. The static video (the anchor rule) is the reference-image latent repeated over time
when there is one (TI2V), the given video's first latent frame in 'v2a', and otherwise (pure
text-to-AV, our choice since the paper always has an image) the first frame of the most recent
clean estimate `x0 = z - sigma * v_vid`, refreshed after every denoiser evaluation and all zeros
before the first one. In 'a2v' only the joint and audio-driven passes run (2B) since no audio is
generated, and symmetrically in 'v2a'. 'cfg' (text CFG) and 'none' are the baselines.

The ODE loop that calls this, its solvers and its argument checks are `diffusion/sampler.py`.
"""

import jax
import jax.numpy as jnp

from harmony_jax.diffusion.flow import Denoiser
from harmony_jax.model.conditioning import Conditioning, concat_conditionings

# One denoiser pass: (video, audio, t_video, t_audio).
Pass = tuple[jax.Array, jax.Array, jax.Array, jax.Array]

GUIDANCES = ("syncfg", "cfg", "none")


def refreshes_anchor(mode: str, guidance: str, has_ref_image: bool) -> bool:
    """Whether the static frame follows the clean estimate: only SyncCFG text-to-AV without a
    reference image has no given frame to hold still."""
    return guidance == "syncfg" and mode == "t2av" and not has_ref_image


def first_anchor(z_v: jax.Array, refresh: bool) -> jax.Array:
    """[B, 1, H, W, C] static frame before the first step: the given video's or the reference
    image's first latent frame, or zeros when it will follow the clean estimate."""
    return jnp.zeros_like(z_v[:, :1]) if refresh else z_v[:, :1]


def refreshed_anchor(z_v: jax.Array, v_v: jax.Array, sigma: jax.Array) -> jax.Array:
    """The first frame of the clean estimate x0 = z - sigma * v (flow matching's x0)."""
    return z_v[:, :1] - sigma * v_v[:, :1]


def _one_call(
    denoise: Denoiser, passes: list[Pass], cond_all: Conditioning
) -> tuple[list[jax.Array], list[jax.Array]]:
    """Runs the passes as one batched denoiser call and splits the outputs per pass, in float32
    so the guidance differences (j - d) keep their precision under a bf16 model."""
    video, audio, t_video, t_audio = (jnp.concatenate(xs) for xs in zip(*passes))
    v_video, v_audio = denoise(video, audio, t_video, t_audio, cond_all)
    return (
        jnp.split(v_video.astype(jnp.float32), len(passes)),
        jnp.split(v_audio.astype(jnp.float32), len(passes)),
    )


def guided_velocity(
    denoise, cond_all, z_v, z_a, t_v, t_a, anchor, silent, *, mode, guidance, s_v, s_a, cfg_scale
):
    """The combined (v_vid, v_aud) of one step (eq. 9-10 under 'syncfg'); `anchor`
    [B, 1, H, W, C] is the static frame of the video-driven pass, `silent` [B, Ta, Ca] the
    audio of the audio-driven one."""
    joint = (z_v, z_a, t_v, t_a)
    if guidance == "none":
        (v_v,), (v_a,) = _one_call(denoise, [joint], cond_all)
        return v_v, v_a
    if guidance == "cfg":
        (c_v, u_v), (c_a, u_a) = _one_call(denoise, [joint, joint], cond_all)
        return u_v + cfg_scale * (c_v - u_v), u_a + cfg_scale * (c_a - u_a)
    audio_driven = (z_v, silent, t_v, jnp.zeros_like(t_a))
    video_driven = (jnp.broadcast_to(anchor, z_v.shape), z_a, jnp.zeros_like(t_v), t_a)
    if mode == "a2v":
        (j_v, d_v), _ = _one_call(denoise, [joint, audio_driven], cond_all)
        return d_v + s_v * (j_v - d_v), jnp.zeros_like(z_a)
    if mode == "v2a":
        _, (j_a, d_a) = _one_call(denoise, [joint, video_driven], cond_all)
        return jnp.zeros_like(z_v), d_a + s_a * (j_a - d_a)
    (j_v, d_v, _), (j_a, _, d_a) = _one_call(denoise, [joint, audio_driven, video_driven], cond_all)
    return d_v + s_v * (j_v - d_v), d_a + s_a * (j_a - d_a)


def passes_conditioning(
    cond: Conditioning, uncond: Conditioning | None, mode: str, guidance: str
) -> Conditioning:
    """The conditioning of the batched call, tiled once outside the loop."""
    if guidance == "none":
        return cond
    if guidance == "cfg":
        return concat_conditionings([cond, uncond])
    return concat_conditionings([cond] * (3 if mode == "t2av" else 2))
