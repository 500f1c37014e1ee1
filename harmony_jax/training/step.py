"""The train state and the jitted train step: CTS loss, gradient accumulation, non-finite guard,
EMA. Randomness is `fold_in(seed, step)`, so a resumed run draws exactly what it would have."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from harmony_jax.diffusion.cts import cts_loss
from harmony_jax.model.lora import combine
from harmony_jax.system import System

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: Any  # the trained parameters: {'dit': ..., 'text': ...}; a LoRA run's adapters
    opt_state: Any
    ema_params: Any  # same tree as params, or None when config.optim.ema_decay == 0
    skipped: jax.Array  # int32 []: updates dropped because the loss or a gradient was not finite
    # a LoRA run's frozen base (every other leaf of the adapted model: no gradient, optimizer
    # state or EMA; never checkpointed, see `training.lora`); None in a full run
    frozen: Any = None

    @property
    def sampling_params(self) -> Any:
        """The weights to sample from: the EMA where the run keeps one, else the raw ones (a
        LoRA run's with its frozen base: the adapted model's whole tree)."""
        return combine(self.frozen, self.params if self.ema_params is None else self.ema_params)


def create_train_state(
    params: Any, tx: optax.GradientTransformation, ema: bool, frozen: Any = None
) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        skipped=jnp.zeros((), jnp.int32),
        frozen=frozen,
    )


def _all_finite(tree: Any) -> jax.Array:
    """Whether every element of `tree` is finite, read off its global norm (one reduction, which
    clipping computes anyway; a norm overflowing float32 counts as not finite). A per-leaf
    `all(isfinite)` makes XLA copy the and-chain over all leaves into every parameter's update
    fusion: quadratic in the leaf count (the demo's step: 171k optimized HLO lines instead of
    50k, 1.6x the compile time)."""
    return jnp.isfinite(optax.global_norm(tree))


def drop_captions(system: System, batch: Batch, rng: jax.Array, rate: float) -> Batch:
    """Replaces both captions of a `rate` fraction of the samples by the empty prompt, so the
    model learns the unconditional side that text CFG extrapolates from (its sampler feeds
    exactly these empty-prompt ids). Transcripts and reference audio are kept: CFG keeps them."""
    if rate <= 0:
        return batch
    empty = dict(zip(("ids", "mask"), system.text_encoder.tokenize([""])))  # [1, L(, Dt)]
    drop = jax.random.bernoulli(rng, rate, (batch["video_text_ids"].shape[0],))  # [B]
    out = dict(batch)
    for kind in ("video", "audio"):
        for part, value in empty.items():
            key = f"{kind}_text_{part}"
            row = drop.reshape(drop.shape + (1,) * (value.ndim - 1))
            out[key] = jnp.where(row, value, batch[key])
    return out


def reference_frames(system: System) -> int:
    """Latent frames of the reference voice (`data.ref_audio_seconds`; 0: none)."""
    d = system.clip
    samples = int(round(float(d.ref_audio_seconds) * d.sample_rate))
    if not samples:
        return 0
    frames, total = system.audio_codec.num_latent_frames(samples), system.audio_latent_shape[0]
    if not 0 < frames <= total:
        raise ValueError(
            f"config.data.ref_audio_seconds={d.ref_audio_seconds} makes {frames} "
            f"audio latent frames; a clip has {total}"
        )
    return frames


def reference_voice(audio0: jax.Array, rng: jax.Array, frames: int) -> jax.Array:
    """The paper's reference voice: a segment of each clip's own audio, `frames` latent frames
    at a uniformly drawn offset, cut at the latent level so media and latent-record runs cut
    the same one: [B, Ta, Ca] -> [B, frames, Ca]."""
    offsets = jax.random.randint(rng, (audio0.shape[0],), 0, audio0.shape[1] - frames + 1)
    return jax.vmap(lambda a, o: jax.lax.dynamic_slice_in_dim(a, o, frames, 0))(audio0, offsets)


def make_loss_fn(system: System, config) -> Callable:
    cts = config.cts
    ref_frames = reference_frames(system)

    def loss_fn(params, batch: Batch, rng: jax.Array):
        k_drop, rng = jax.random.split(rng)
        k_lora = None
        if system.lora is not None and system.lora.dropout:  # a full run draws as it always did
            k_lora, rng = jax.random.split(rng)
        video0, audio0 = system.encode_media(batch)  # [B, Tv, h, w, Cv], [B, Ta, Ca]
        cond = system.conditioning(
            params, drop_captions(system, batch, k_drop, cts.caption_dropout)
        )
        if ref_frames and cond.ref_audio is None:  # unless the batch brings its own
            k_ref, rng = jax.random.split(rng)
            cond = cond.replace(ref_audio=reference_voice(audio0, k_ref, ref_frames))
        return cts_loss(
            system.denoiser(params, k_lora),
            video0,
            audio0,
            cond,
            rng,
            mode=cts.mode,
            fractions=tuple(cts.fractions),
            lambda_v=cts.lambda_v,
            lambda_a=cts.lambda_a,
            shift=config.flow.shift,
            sigma_sampling=config.flow.sigma_sampling,
            loss=config.flow.loss,
            noise_correlation=system.frame_noise_correlation,
            ref_image_prob=cts.ref_image_prob,
        )

    return loss_fn


def _grads(loss_fn: Callable, params: Any, batch: Batch, rng: jax.Array, accum: int):
    """Mean loss, metrics and gradients over `accum` equal microbatches (a scan: one compile)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
        (_, metrics), grads = grad_fn(params, batch, rng)
        return metrics, grads
    micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

    def body(carry, xs):
        mb, i = xs
        (_, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (metrics, grads)), None

    (_, metrics_shape), grads_shape = jax.eval_shape(
        grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng
    )
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (metrics_shape, grads_shape))
    (metrics, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
    return jax.tree.map(lambda x: x / accum, (metrics, grads))


def make_train_step(
    system: System, tx: optax.GradientTransformation, config
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    loss_fn = make_loss_fn(system, config)
    accum, ema_decay = int(config.optim.grad_accum), float(config.optim.ema_decay)
    if config.batch_size % accum:
        raise ValueError(
            f"config.batch_size={config.batch_size} is not divisible by "
            f"config.optim.grad_accum={accum}"
        )

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
        # differentiated w.r.t. the trained leaves only: a frozen base gets no gradient
        loss = lambda trained, b, r: loss_fn(combine(state.frozen, trained), b, r)
        metrics, grads = _grads(loss, state.params, batch, rng, accum)
        finite = jnp.isfinite(metrics["loss"]) & _all_finite(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        ema = state.ema_params
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        metrics = dict(
            metrics, grad_norm=optax.global_norm(grads), finite=finite.astype(jnp.float32)
        )
        return state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema,
            skipped=state.skipped + (~finite),
        ), metrics

    return train_step
