"""From prompts (and optionally a given audio, video or reference image) to decoded clips.

One jitted function per (mode, guidance, steps, solver) runs the whole sampler; encoding of the
given media happens inside it, decoding (Griffin-Lim for the mel codec) on the host after it.
Prompts are embedded before it (`embed_prompts`), so a frozen text encoder need not stay in
memory while it runs (`release_text_encoder`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax.diffusion.sampler import MODES, sample
from harmony_jax.model.conditioning import Conditioning
from harmony_jax.system import System


def _check_not_empty(captions: Sequence[str], what: str) -> None:
    """An empty caption is the unconditional side of CFG: as a prompt it is a mistake (a
    forgotten --prompt), not a request."""
    for i, caption in enumerate(captions):
        if not caption.strip():
            raise ValueError(f"{what} {i} is empty; describe the clip to generate")


def prompt_batch(
    system: System,
    video_captions: Sequence[str],
    audio_captions: Sequence[str] | None = None,
    transcripts: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Token ids of N prompts (sound caption defaults to the video caption); raises ValueError
    for an empty or blank caption. Transcripts may be empty (nothing is spoken)."""
    _check_not_empty(video_captions, "video caption")
    if audio_captions is not None:
        _check_not_empty(audio_captions, "audio caption")
    return _token_batch(system, video_captions, audio_captions, transcripts)


def _token_batch(
    system: System,
    video_captions: Sequence[str],
    audio_captions: Sequence[str] | None = None,
    transcripts: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    n = len(video_captions)
    audio_captions = list(video_captions) if audio_captions is None else list(audio_captions)
    transcripts = [""] * n if transcripts is None else list(transcripts)
    if not len(audio_captions) == len(transcripts) == n:
        raise ValueError(
            f"{n} video captions but {len(audio_captions)} audio captions and "
            f"{len(transcripts)} transcripts"
        )
    v_ids, v_mask = system.text_encoder.tokenize(list(video_captions))
    a_ids, a_mask = system.text_encoder.tokenize(audio_captions)
    return dict(
        video_text_ids=v_ids,
        video_text_mask=v_mask,
        audio_text_ids=a_ids,
        audio_text_mask=a_mask,
        transcript_ids=system.transcript_tokenizer(transcripts),
    )


@dataclasses.dataclass(frozen=True)
class Prompts:
    """N embedded prompts: the sampler's conditioning, and the empty prompt's (text CFG's other
    side; None unless guidance is 'cfg')."""

    cond: Conditioning
    uncond: Conditioning | None = None

    @property
    def num(self) -> int:
        return self.cond.batch_size


def embed_prompts(
    system: System, params: Any, batch: dict[str, np.ndarray], guidance: str | None = None
) -> Prompts:
    """The conditioning of `prompt_batch`'s token ids (+ `ref_audio`) for `guidance` (default
    `system.sampler.guidance`), computed before the sampler by a program of its own, which for a
    frozen text encoder is dropped after the call: nothing compiled keeps that encoder's
    weights, so `release_text_encoder` can free them."""
    n = batch["video_text_ids"].shape[0]
    uncond = None
    if (guidance or system.sampler.guidance) == "cfg":
        uncond = _token_batch(system, [""] * n)
        if "ref_audio" in batch:  # the voice is not text: CFG keeps it on both sides
            uncond["ref_audio"] = batch["ref_audio"]
    embed = _conditioning(system) if system.text_encoder.trainable else jax.jit(system.conditioning)
    with on_params_mesh(system, params):
        return Prompts(embed(params, batch), None if uncond is None else embed(params, uncond))


@functools.lru_cache(maxsize=16)
def _conditioning(system: System):
    return jax.jit(system.conditioning)


def release_text_encoder(system: System) -> None:
    """Frees a frozen text encoder's weights (umT5-XXL: 11 GB in bfloat16) once the prompts are
    embedded; a later prompt reads them again. A trained one (the demo's) is part of `params`."""
    system.text_encoder.__dict__.pop("params", None)  # the encoder's cached_property


@functools.lru_cache(maxsize=16)
def _sampler(system: System, mode: str, guidance: str, steps: int, solver: str):
    s = system.sampler

    @jax.jit
    def run(params, rng, cond, uncond, given_video, given_audio, ref_image, scales):
        n = cond.batch_size
        silent = system.audio_codec.encode(jnp.zeros((1, system.num_samples), jnp.float32))
        encode_v = lambda x: None if x is None else system.video_codec.encode(x)
        return sample(
            system.denoiser(params),
            rng,
            cond,
            video_shape=(n, *system.video_latent_shape),
            audio_shape=(n, *system.audio_latent_shape),
            mode=mode,
            guidance=guidance,
            steps=steps,
            shift=s.shift,
            s_v=scales[0],
            s_a=scales[1],
            cfg_scale=scales[2],
            solver=solver,
            given_video=encode_v(given_video),
            given_audio=None if given_audio is None else system.audio_codec.encode(given_audio),
            ref_image=None if ref_image is None else encode_v(ref_image[:, None]),
            uncond=uncond,
            silent_audio=silent,
            noise_correlation=system.frame_noise_correlation,
        )

    return run


def on_params_mesh(system: System, params: Any) -> contextlib.AbstractContextManager:
    """The mesh `params` are sharded on (`inference.load_for_inference`'s) with the run's axis
    rules, so the sampler's activations are laid out as in training; nothing where a mesh is
    set already (training's samples) or the parameters sit on one device."""
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    if not jax.sharding.get_abstract_mesh().empty or not isinstance(
        sharding, jax.sharding.NamedSharding
    ):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(sharding.mesh))
    stack.enter_context(nn.logical_axis_rules(system.axis_rules))
    return stack


def sample_latents(
    system: System,
    params: Any,
    rng: jax.Array,
    batch: dict[str, np.ndarray] | Prompts,
    *,
    mode: str = "t2av",
    guidance: str | None = None,
    steps: int | None = None,
    solver: str | None = None,
    s_v: float | None = None,
    s_a: float | None = None,
    cfg_scale: float | None = None,
    given_video: np.ndarray | None = None,
    given_audio: np.ndarray | None = None,
    ref_image: np.ndarray | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The sampler's clean latents (video [N, *video_latent_shape], audio
    [N, *audio_latent_shape], float32) before decoding; arguments as `generate`'s; `batch` may
    be already embedded (`embed_prompts`)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    if mode == "a2v" and given_audio is None:
        raise ValueError("mode='a2v' needs the driving audio (given_audio)")
    if mode == "v2a" and given_video is None:
        raise ValueError("mode='v2a' needs the driving video (given_video)")
    s = system.sampler
    guidance = guidance or s.guidance
    prompts = batch
    if not isinstance(prompts, Prompts):
        prompts = embed_prompts(system, params, batch, guidance)
    if guidance == "cfg" and prompts.uncond is None:
        raise ValueError("guidance='cfg' needs prompts embedded with guidance='cfg'")
    steps = int(s.steps if steps is None else steps)  # 0 is refused by the sampler, not replaced
    run = _sampler(system, mode, guidance, steps, solver or s.solver)
    scales = jnp.asarray(
        [
            s.s_v if s_v is None else s_v,
            s.s_a if s_a is None else s_a,
            s.cfg_scale if cfg_scale is None else cfg_scale,
        ],
        jnp.float32,
    )
    as_f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
    with on_params_mesh(system, params):
        return run(
            params,
            rng,
            prompts.cond,
            prompts.uncond,
            as_f32(given_video),
            as_f32(given_audio),
            as_f32(ref_image),
            scales,
        )


def generate(
    system: System,
    params: Any,
    rng: jax.Array,
    batch: dict[str, np.ndarray] | Prompts,
    *,
    mode: str = "t2av",
    guidance: str | None = None,
    steps: int | None = None,
    solver: str | None = None,
    s_v: float | None = None,
    s_a: float | None = None,
    cfg_scale: float | None = None,
    given_video: np.ndarray | None = None,
    given_audio: np.ndarray | None = None,
    ref_image: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded clips: (frames [N, F, H, W, 3] in [-1, 1], waveforms [N, S]).

    `batch` comes from `prompt_batch`, optionally with `ref_audio` [N, S_ref] (a reference
    voice waveform at the codec's rate), or from `embed_prompts`. A2V returns `given_audio`
    [N, S] sample for sample and V2A returns `given_video` [N, F, H, W, 3] frame for frame;
    unset options come from `config.sample`.
    """
    video_lat, audio_lat = sample_latents(
        system,
        params,
        rng,
        batch,
        mode=mode,
        guidance=guidance,
        steps=steps,
        solver=solver,
        s_v=s_v,
        s_a=s_a,
        cfg_scale=cfg_scale,
        given_video=given_video,
        given_audio=given_audio,
        ref_image=ref_image,
    )
    frames = (
        np.asarray(given_video, np.float32)
        if mode == "v2a"
        else np.clip(system.video_codec.decode(video_lat), -1.0, 1.0)
    )
    waves = (
        np.asarray(given_audio, np.float32)
        if mode == "a2v"
        else np.clip(system.audio_codec.decode(audio_lat), -1.0, 1.0)
    )
    return frames, waves
