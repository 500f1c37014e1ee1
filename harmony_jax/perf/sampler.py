"""SyncCFG sampling cost: one joint forward pass, the batched 3B call SyncCFG makes per step, and
the whole jitted sampler (`diffusion.sampler.sample`, Euler) per step and per clip.

SyncCFG runs the joint, audio-driven and video-driven passes as one call on 3B rows, so a step
costs at least 3 joint passes where the device is busy at B rows; the ratio step / forward says
how close the sampler gets to that floor (less than 3 where B rows leave the device idle).
Several `model.attention` kernels are measured in one run, each set against the first.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmony_jax import plan
from harmony_jax.diffusion.sampler import sample
from harmony_jax.model.attention import uses_splash
from harmony_jax.model.conditioning import concat_conditionings
from harmony_jax.perf.measure import format_table, interleaved_medians
from harmony_jax.perf.train_step import interpreted_note, quick_config, random_batch


def headers(baseline: str) -> tuple[str, ...]:
    """The table's columns, the last one each time against the `baseline` kernel's."""
    return ("attention", "measurement", "rows", "ms", "x joint forward", f"x {baseline}")


@dataclasses.dataclass(frozen=True)
class SamplerTimes:
    batch: int
    steps: int
    forward_seconds: float  # one joint pass on `batch` rows
    batched_seconds: float  # one pass on 3 x `batch` rows: SyncCFG's call per step
    clip_seconds: float  # the jitted sampler, `steps` SyncCFG Euler steps

    @property
    def step_seconds(self) -> float:
        return self.clip_seconds / self.steps

    @property
    def step_ratio(self) -> float:
        """One SyncCFG step over one joint forward pass: 3.0 is the compute-bound floor."""
        return self.step_seconds / self.forward_seconds


def quick_sampler_config() -> ml_collections.ConfigDict:
    """The train-step benchmark's tiny model, one clip at a time."""
    config = quick_config()
    config.batch_size = 1
    return config


def measure_sampler(
    config: ml_collections.ConfigDict, *, steps: int = 40, runs: int = 3, warmup: int = 1
) -> SamplerTimes:
    """Times of `config`'s model on latents of its geometry (`plan.latent_system`), randomly
    initialised, `config.batch_size` clips at a time, text-to-AV with SyncCFG."""
    system = plan.latent_system(config)
    b = config.batch_size
    batch = random_batch(system, b, np.random.default_rng(1))
    params = jax.jit(system.init)(jax.random.key(0), batch)
    cond = jax.jit(system.conditioning)(params, batch)
    video, audio = batch["video"], batch["audio"]
    t_v, t_a = (jnp.full(x.shape[:2], 500.0) for x in (video, audio))
    forward = jax.jit(lambda p, *args: system.denoiser(p)(*args))
    tile = lambda x: jnp.concatenate([x] * 3)
    args3 = (tile(video), tile(audio), tile(t_v), tile(t_a), concat_conditionings([cond] * 3))
    s = config.sample
    run = jax.jit(
        lambda p, rng, c: sample(
            system.denoiser(p),
            rng,
            c,
            video_shape=video.shape,
            audio_shape=audio.shape,
            mode="t2av",
            guidance="syncfg",
            steps=steps,
            shift=s.shift,
            s_v=s.s_v,
            s_a=s.s_a,
        )
    )
    times = interleaved_medians(
        {
            "forward": lambda: forward(params, video, audio, t_v, t_a, cond),
            "batched": lambda: forward(params, *args3),
            "clip": lambda: run(params, jax.random.key(2), cond),
        },
        runs,
        warmup,
    )
    return SamplerTimes(
        batch=b,
        steps=steps,
        forward_seconds=times["forward"],
        batched_seconds=times["batched"],
        clip_seconds=times["clip"],
    )


def default_attentions(config: ml_collections.ConfigDict, quick: bool) -> tuple[str, ...]:
    """The config's kernel, and beside it blockwise and splash where the backend runs them at
    this size: on a TPU, or for the tiny `--quick` model (splash interpreted off TPU). A kernel
    the config's already is ('auto' on TPU is splash) is not measured twice."""
    kernel = str(config.model.attention)
    if not (quick or jax.default_backend() == "tpu"):
        return (kernel,)
    return (kernel,) + tuple(
        k
        for k in ("blockwise", "splash")
        if k != kernel and not (k == "splash" and uses_splash(kernel))
    )


def measure_attentions(
    config: ml_collections.ConfigDict, attentions, **kwargs
) -> dict[str, SamplerTimes]:
    """`measure_sampler` (same `kwargs`) once per `model.attention` kernel, in this order."""
    times = {}
    for attention in attentions:
        c = ml_collections.ConfigDict(config.to_dict())
        c.model.attention = attention
        times[attention] = measure_sampler(c, **kwargs)
    return times


def _rows(t: SamplerTimes) -> list[tuple[str, int, float]]:
    return [
        ("joint forward", t.batch, t.forward_seconds),
        ("batched forward (the SyncCFG call)", 3 * t.batch, t.batched_seconds),
        ("SyncCFG step (in the jitted sampler)", 3 * t.batch, t.step_seconds),
        (f"SyncCFG clip ({t.steps} steps)", 3 * t.batch, t.clip_seconds),
    ]


def sampler_table(times: dict[str, SamplerTimes]) -> str:
    """One block of rows per kernel: ms, as a multiple of its joint forward, and against the
    same measurement under the first kernel. Interpreted kernels are named so."""
    baseline = next(iter(times))
    rows = []
    for attention, t in times.items():
        name = f"{attention} (interpreted)" if interpreted_note(attention) else attention
        for (what, n, seconds), (_, _, base) in zip(_rows(t), _rows(times[baseline])):
            rows.append((name, what, n, 1e3 * seconds, seconds / t.forward_seconds, seconds / base))
    return format_table(headers(baseline), rows)
