"""One sampler for every generation mode: text-to-AV, audio-to-video, video-to-audio.

SyncCFG (paper eq. 9-10) guides each modality away from a "driven" prediction whose partner
modality carries no synchrony information:

    v_vid = d_v + s_v (j_v - d_v)    d_v: video driven by the silent-audio latent (t_a = 0)
    v_aud = d_a + s_a (j_a - d_a)    d_a: audio driven by a static video (t_v = 0)

where j_v, j_a is the joint prediction. The passes of one step go through the denoiser as ONE
batched call. The static video is the reference-image latent repeated over time when there is
one (TI2V), the given video's first latent frame in 'v2a', and otherwise (pure text-to-AV, our
choice since the paper always has an image) the first frame of the most recent clean estimate
`x0 = z - sigma * v_vid`, refreshed after every denoiser evaluation and all zeros before the
first one.

A clean input (the given modality in 'a2v' / 'v2a', the reference frame) is fed at timestep 0 in
every pass and gets zero velocity, so it is returned bit-for-bit. In 'a2v' only the joint and
audio-driven passes run (2B) since no audio is generated, and symmetrically in 'v2a'.
"""

import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax.diffusion import flow
from harmony_jax.diffusion.flow import Denoiser
from harmony_jax.model.conditioning import Conditioning, concat_conditionings

# One denoiser pass: (video, audio, t_video, t_audio).
Pass = tuple[jax.Array, jax.Array, jax.Array, jax.Array]

MODES = ("t2av", "a2v", "v2a")
GUIDANCES = ("syncfg", "cfg", "none")
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


def _guided_velocity(
    denoise, cond_all, z_v, z_a, t_v, t_a, anchor, silent, *, mode, guidance, s_v, s_a, cfg_scale
):
    """The combined (v_vid, v_aud) of one step; `anchor` [B, 1, H, W, C] is the static frame."""
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


def _passes_conditioning(
    cond: Conditioning, uncond: Conditioning | None, mode: str, guidance: str
) -> Conditioning:
    """The conditioning of the batched call, tiled once outside the loop."""
    if guidance == "none":
        return cond
    if guidance == "cfg":
        return concat_conditionings([cond, uncond])
    return concat_conditionings([cond] * (3 if mode == "t2av" else 2))


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
) -> tuple[jax.Array, jax.Array]:
    """Integrates the flow ODE from noise (sigma 1) to data (sigma 0); returns (video, audio).

    video_shape [B, Tv, H, W, C] and audio_shape [B, Ta, Ca] are full latent shapes. `mode`
    't2av' generates both; 'a2v' generates video for `given_audio` [B, Ta, Ca] and returns it
    unchanged; 'v2a' the converse with `given_video`. `ref_image` [B, 1, H, W, C] fixes the
    first video latent frame (TI2V). `guidance`: 'syncfg' (s_v, s_a; `silent_audio`, the audio
    codec's encoding of silence, [1 or B, Ta, Ca], zeros if None), 'cfg' (text CFG
    against `uncond` with `cfg_scale`), 'none'. `solver`: 'euler', or 'heun' (2nd order; its
    final step to sigma 0 is Euler). Deterministic: one rng, one result. Under jit, pass
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
    z_v = jax.random.normal(k_video, video_shape, jnp.float32)  # [B, Tv, H, W, C]
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
    refresh_anchor = guidance == "syncfg" and mode == "t2av" and ref_image is None
    # [B, 1, H, W, C] static-video frame: the given video's or the reference's first frame,
    # else (t2av SyncCFG) refreshed from the clean estimate; unused by the other modes.
    anchor = jnp.zeros_like(z_v[:, :1]) if refresh_anchor else z_v[:, :1]
    cond_all = _passes_conditioning(cond, uncond, mode, guidance)

    def evaluate(z_v, z_a, sigma, anchor):
        t_v = jnp.broadcast_to(
            jnp.where(video_fixed, 0.0, flow.timestep(sigma)), video_shape[:2]
        )  # [B, Tv]
        t_a = jnp.full(audio_shape[:2], 0.0 if audio_fixed else flow.timestep(sigma))  # [B, Ta]
        v_v, v_a = _guided_velocity(
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
            anchor = z_v[:, :1] - sigma * v_v[:, :1]
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
