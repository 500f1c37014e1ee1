"""Why a demo model does or does not learn its world (bench/demo_diagnostics.py prints these).

Position: the std across patch positions of x0 predicted from a spatially constant input (0 for
a translation-equivariant tower). Per sigma: the model's x0 error against the optimal denoiser
of a set of clips (the posterior mean over those sharing the prompt). Text path: the share of
the predicted colour mass on the captioned colours, under the caption and under one with its
colours swapped. Rotary bands: how many RoPE frequencies resolve a small patch grid.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from harmony_jax import generation
from harmony_jax.data.sounding_shapes import BACKGROUND
from harmony_jax.diffusion import flow
from harmony_jax.eval.shapes import palette_directions
from harmony_jax.model.rope import axis_split

SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.95)


@functools.partial(jax.jit, static_argnums=0)  # one compile per shape, not one trace per call
def _predict_x0(system, params, video, audio, sigma, batch):
    """The model's x0 of video latents noised to `sigma` (audio noised alike), per clip."""
    cond = system.conditioning(params, batch)
    b, tv, ta = video.shape[0], video.shape[1], audio.shape[1]
    s_v, s_a = jnp.full((b, tv), sigma), jnp.full((b, ta), sigma)
    v, _ = system.denoiser(params)(
        video, audio, flow.timestep(s_v), flow.timestep(s_a), cond
    )  # velocity e - x0
    return video - sigma * v  # x_t - s v = x0


def _noised(x0, rng, sigma):
    return flow.add_noise(x0, jax.random.normal(rng, x0.shape), jnp.full(x0.shape[:1], sigma))


def position_std(system, params, batch, audio) -> tuple[float, float]:
    """(std across patch positions of x0 predicted from a constant input, same of real clips).

    The input repeats one noisy patch over every position of every frame: a frame that differs
    from the others would, through RoPE, weigh differently at the grid's edges than inside."""
    video_shape = system.video_latent_shape  # [Tv, h, w, C]
    _, ph, pw = system.model_config.video.patch
    tv, h, w, c = video_shape
    grid = (h // ph, w // pw)
    patch_noise = np.random.default_rng(0).normal(size=(1, 1, 1, ph, 1, pw, c))
    noise = np.broadcast_to(patch_noise, (1, tv, grid[0], ph, grid[1], pw, c)).reshape(
        1, tv, h, w, c
    )
    background = np.asarray(BACKGROUND) * 2 - 1
    x_t = jnp.asarray(0.05 * background + 0.95 * noise, jnp.float32)
    one = jax.tree.map(lambda x: x[:1], batch)
    x0 = _predict_x0(system, params, x_t, audio[:1], 0.95, one)

    def across_positions(x):
        patches = np.asarray(x).reshape(-1, tv, grid[0], ph, grid[1], pw, c)
        return float(patches.std(axis=(2, 4)).mean())

    return across_positions(x0), across_positions(system.encode_media(batch)[0])


def optimal_x0(x_t, clips, sigma, same_caption) -> np.ndarray:
    """Posterior mean of x0 over the clips sharing each sample's caption, given x_t."""
    x_t, clips = np.asarray(x_t, np.float64), np.asarray(clips, np.float64)
    d2 = ((x_t[:, None] - (1 - sigma) * clips[None]) ** 2).reshape(len(x_t), len(clips), -1)
    logp = np.where(same_caption, -d2.sum(-1) / (2 * sigma**2), -np.inf)
    weights = np.exp(logp - logp.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("ij,j...->i...", weights, clips)


def per_sigma(system, params, batch, video, audio, captions) -> list[tuple[float, float, float]]:
    """(sigma, model x0 MSE, optimal x0 MSE) on the measured clips."""
    same = np.array([[a == b for b in captions] for a in captions])
    rows = []
    for i, sigma in enumerate(SIGMAS):
        x_t = _noised(video, jax.random.key(i), sigma)
        a_t = _noised(audio, jax.random.key(100 + i), sigma)
        model = np.asarray(_predict_x0(system, params, x_t, a_t, sigma, batch))
        best = optimal_x0(x_t, video, sigma, same)
        rows.append(
            (sigma, float(np.mean((model - video) ** 2)), float(np.mean((best - video) ** 2)))
        )
    return rows


def _colour_share(x0, colors_per_clip, palette) -> float:
    """Mean share of the mass projected on the world's `palette` that falls on each clip's
    captioned colours."""
    rgb = (np.asarray(x0, np.float64) + 1) / 2 - np.asarray(BACKGROUND)  # [B, T, H, W, 3]
    directions = palette_directions(palette)
    cosine = np.einsum("bthwc,kc->bthwk", rgb, directions) / (
        np.linalg.norm(rgb, axis=-1, keepdims=True) + 1e-9
    )
    mass = np.where(cosine == cosine.max(-1, keepdims=True), np.abs(rgb).max(-1, keepdims=True), 0)
    mass = mass.sum(axis=(1, 2, 3))  # [B, K]
    keep = np.array([[n in colors for n in palette] for colors in colors_per_clip])
    return float(np.mean((mass * keep).sum(-1) / (mass.sum(-1) + 1e-9)))


def _swap_colours(caption: str, colors, palette) -> tuple[str, tuple[str, ...]]:
    others = [n for n in palette if n not in colors]
    new = tuple(others[: len(colors)])
    for old, replacement in zip(colors, new):
        caption = re.sub(rf"\b{old}\b", replacement, caption)
    return caption, new


def text_path(system, params, world, n, video, audio) -> tuple[float, float]:
    """(colour share under the clip's own caption, under colour-swapped captions) at sigma 0.9."""
    scenes = [world.scene(i) for i in range(n)]
    clips = [world[i] for i in range(n)]
    x_t = _noised(video, jax.random.key(7), 0.9)
    a_t = _noised(audio, jax.random.key(8), 0.9)
    shares = []
    for swap in (False, True):
        vc, ac, captioned = [], [], []
        for clip, scene in zip(clips, scenes):
            video_caption, audio_caption = clip["video_caption"], clip["audio_caption"]
            colors = scene.colors
            if swap:
                video_caption, new = _swap_colours(video_caption, scene.colors, world.colors)
                audio_caption, _ = _swap_colours(audio_caption, scene.colors, world.colors)
                colors = new
            vc.append(video_caption)
            ac.append(audio_caption)
            captioned.append(colors)
        batch = generation.prompt_batch(system, vc, ac)
        x0 = _predict_x0(system, params, x_t, a_t, 0.9, batch)
        shares.append(_colour_share(x0, captioned, world.colors))
    return shares[0], shares[1]


def rotary_bands(head_dim: int, grid: tuple[int, int], theta: float) -> list[tuple[int, int]]:
    """Per spatial axis: (bands resolving position across it, bands in all)."""
    out = []
    for dim, size in zip(axis_split(head_dim)[1:], grid):
        inv_freq = 1.0 / theta ** (np.arange(0, dim, 2)[: dim // 2] / dim)
        out.append((int(np.sum(inv_freq * (size - 1) >= np.pi / 4)), len(inv_freq)))
    return out
