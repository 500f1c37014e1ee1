"""One sampler for every generation mode: text-to-AV, audio-to-video, video-to-audio.

It integrates the flow ODE from noise to data with Euler or Heun steps; each step's velocity is
SyncCFG's, CFG's or the plain joint prediction (`diffusion/syncfg.py`). A clean input (the given
modality in 'a2v' / 'v2a', the reference frame) is fed at timestep 0 in every pass and gets zero
velocity, so it is returned bit-for-bit.
"""

import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax.diffusion import flow, syncfg
from harmony_jax.diffusion.flow import Denoiser
from harmony_jax.diffusion.syncfg import GUIDANCES
from harmony_jax.model.conditioning import Conditioning

MODES = ("t2av", "a2v", "v2a")
SOLVERS = ("euler", "heun")


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"sampler {name}={value!r} is not one of {valid}")


def _check_shape(name: str, x: jax.Array | None, shape: tuple[int, ...]) -> None:
    if x is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"sampler {name} has shape {tuple(x.shape)}, expected {tuple(shape)}")


def _check_args(
    cond,
    video_shape,
    audio_shape,
    mode,
    guidance,
    solver,
    steps,
    given_video,
    given_audio,
    ref_image,
    uncond,
    silent_audio,
) -> None:
    _check_choice("mode", mode, MODES)
    _check_choice("guidance", guidance, GUIDANCES)
    _check_choice("solver", solver, SOLVERS)
    if steps < 1:
        raise ValueError(f"sampler steps={steps} must be at least 1")
    if len(video_shape) != 5 or len(audio_shape) != 3:
        raise ValueError(
            f"sampler video_shape {video_shape} must be [B, Tv, H, W, C] and "
            f"audio_shape {audio_shape} [B, Ta, Ca]"
        )
    if not video_shape[0] == audio_shape[0] == cond.batch_size:
        raise ValueError(
            f"sampler batch sizes differ: video_shape {video_shape}, audio_shape "
            f"{audio_shape}, cond batch {cond.batch_size}"
        )
    if (given_audio is None) == (mode == "a2v"):
        raise ValueError(
            f"sampler given_audio is required by mode 'a2v' and only by it (mode={mode!r})"
        )
    if (given_video is None) == (mode == "v2a"):
        raise ValueError(
            f"sampler given_video is required by mode 'v2a' and only by it (mode={mode!r})"
        )
    if ref_image is not None and mode == "v2a":
        raise ValueError("sampler ref_image has no meaning in mode 'v2a': the whole video is given")
    if guidance == "cfg" and uncond is None:
        raise ValueError("sampler guidance='cfg' needs the `uncond` Conditioning")
    _check_shape("given_video", given_video, video_shape)
    _check_shape("given_audio", given_audio, audio_shape)
    _check_shape("ref_image", ref_image, (video_shape[0], 1) + tuple(video_shape[2:]))
    if silent_audio is not None and (
        silent_audio.ndim != 3
        or silent_audio.shape[0] not in (1, audio_shape[0])
        or tuple(silent_audio.shape[1:]) != tuple(audio_shape[1:])
    ):
        raise ValueError(
            f"sampler silent_audio has shape {tuple(silent_audio.shape)}, expected "
            f"[1 or B, Ta, Ca] with audio_shape {tuple(audio_shape)}"
        )


def sample(
    denoise: Denoiser,
    rng: jax.Array,
    cond: Conditioning,
    *,
    video_shape: tuple[int, ...],
    audio_shape: tuple[int, ...],
    mode: str = "t2av",
    guidance: str = "syncfg",
    steps: int = 40,
    shift: float = 5.0,
    s_v: float = 3.0,
    s_a: float = 2.0,
    cfg_scale: float = 5.0,
    solver: str = "euler",
    given_video: jax.Array | None = None,
    given_audio: jax.Array | None = None,
    ref_image: jax.Array | None = None,
    uncond: Conditioning | None = None,
    silent_audio: jax.Array | None = None,
    noise_correlation: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Integrates the flow ODE from noise (sigma 1) to data (sigma 0); returns (video, audio).

    video_shape [B, Tv, H, W, C] and audio_shape [B, Ta, Ca] are full latent shapes. `mode`
    't2av' generates both; 'a2v' generates video for `given_audio` [B, Ta, Ca] and returns it
    unchanged; 'v2a' the converse with `given_video`. `ref_image` [B, 1, H, W, C] fixes the
    first video latent frame (TI2V). `guidance`: 'syncfg' (s_v, s_a; `silent_audio`, the audio
    codec's encoding of silence, [1 or B, Ta, Ca], zeros if None), 'cfg' (text CFG
    against `uncond` with `cfg_scale`), 'none'. `solver`: 'euler', or 'heun' (2nd order; its
    final step to sigma 0 is Euler). `noise_correlation`: the video noise's between frames, as
    the model was trained (flow.frame_noise). Deterministic: one rng, one result. Under jit, pass
    denoise, shapes, mode, guidance, steps and solver as static; the rest may be traced.
    """
    _check_args(
        cond,
        video_shape,
        audio_shape,
        mode,
        guidance,
        solver,
        steps,
        given_video,
        given_audio,
        ref_image,
        uncond,
        silent_audio,
    )
    num_frames = video_shape[1]
    video_fixed = np.full(num_frames, mode == "v2a")  # [Tv] frames fed clean at t = 0
    video_fixed[0] |= ref_image is not None
    audio_fixed = mode == "a2v"
    video_keep = jnp.asarray(~video_fixed)[None, :, None, None, None]  # [1, Tv, 1, 1, 1]

    k_video, k_audio = jax.random.split(rng)
    z_v = flow.frame_noise(k_video, video_shape, noise_correlation)  # [B, Tv, H, W, C]
    z_a = jax.random.normal(k_audio, audio_shape, jnp.float32)  # [B, Ta, Ca]
    if given_video is not None:
        z_v = given_video.astype(jnp.float32)
    if ref_image is not None:
        z_v = z_v.at[:, :1].set(ref_image.astype(jnp.float32))
    if given_audio is not None:
        z_a = given_audio.astype(jnp.float32)
    silent = jnp.broadcast_to(
        jnp.asarray(0.0 if silent_audio is None else silent_audio, jnp.float32), audio_shape
    )  # [B, Ta, Ca]
    refresh_anchor = syncfg.refreshes_anchor(mode, guidance, ref_image is not None)
    anchor = syncfg.first_anchor(z_v, refresh_anchor)  # [B, 1, H, W, C]
    cond_all = syncfg.passes_conditioning(cond, uncond, mode, guidance)

    def evaluate(z_v, z_a, sigma, anchor):
        t_v = jnp.broadcast_to(
            jnp.where(video_fixed, 0.0, flow.timestep(sigma)), video_shape[:2]
        )  # [B, Tv]
        t_a = jnp.full(audio_shape[:2], 0.0 if audio_fixed else flow.timestep(sigma))  # [B, Ta]
        v_v, v_a = syncfg.guided_velocity(
            denoise,
            cond_all,
            z_v,
            z_a,
            t_v,
            t_a,
            anchor,
            silent,
            mode=mode,
            guidance=guidance,
            s_v=s_v,
            s_a=s_a,
            cfg_scale=cfg_scale,
        )
        v_v = jnp.where(video_keep, v_v, 0.0)
        v_a = jnp.zeros_like(z_a) if audio_fixed else v_a
        if refresh_anchor:
            anchor = syncfg.refreshed_anchor(z_v, v_v, sigma)
        return v_v, v_a, anchor

    sigmas = flow.sigma_schedule(steps, shift)  # [steps + 1]

    def euler_step(i, state):
        z_v, z_a, anchor = state
        dt = sigmas[i + 1] - sigmas[i]
        v_v, v_a, anchor = evaluate(z_v, z_a, sigmas[i], anchor)
        return z_v + dt * v_v, z_a + dt * v_a, anchor

    def heun_step(i, state):
        z_v, z_a, anchor = state
        dt = sigmas[i + 1] - sigmas[i]
        v_v, v_a, anchor = evaluate(z_v, z_a, sigmas[i], anchor)
        w_v, w_a, anchor = evaluate(z_v + dt * v_v, z_a + dt * v_a, sigmas[i + 1], anchor)
        return z_v + dt * 0.5 * (v_v + w_v), z_a + dt * 0.5 * (v_a + w_a), anchor

    state = (z_v, z_a, anchor)
    if solver == "euler":
        state = jax.lax.fori_loop(0, steps, euler_step, state)
    else:
        state = jax.lax.fori_loop(0, steps - 1, heun_step, state)
        state = euler_step(steps - 1, state)
    return state[0], state[1]
