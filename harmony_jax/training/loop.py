"""The training loop: `train(config, workdir)` reads top to bottom in sections
(workdir, mesh, system, init, resume, data, step, loop), resuming from the latest checkpoint."""

from __future__ import annotations

import itertools
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging

from harmony_jax import generation
from harmony_jax.compile_cache import enable_compile_cache
from harmony_jax.config_check import check_config
from harmony_jax.convert.f5_text import load_transcript
from harmony_jax.convert.wan import load_video_tower
from harmony_jax.data.latent_records import sample_items, unloaded_message
from harmony_jax.data.pipeline import make_source, make_train_iterator
from harmony_jax.media import write_av
from harmony_jax.model.lora import count, merge
from harmony_jax.parallel import distributed
from harmony_jax.parallel.mesh import make_mesh
from harmony_jax.parallel.sharding import axis_rules, batch_sharding, process_rows, replicated
from harmony_jax.system import System, build_system, latent_inputs
from harmony_jax.training import lora
from harmony_jax.training.checkpoint import Checkpointer, read_run, steps_in, write_config
from harmony_jax.training.preemption import PreemptionWatch
from harmony_jax.training.progress import Progress
from harmony_jax.training.state import make_train_state
from harmony_jax.training.step import TrainState, make_train_step


class NonFiniteError(RuntimeError):
    """A step produced a non-finite loss or gradient and `config.optim.on_nonfinite='halt'`."""


def _nonfinite_message(step: int, metrics: dict[str, float]) -> str:
    bad = [k for k in sorted(metrics) if not np.isfinite(metrics[k])]
    what = bad[0] if bad else "a gradient (loss terms are finite)"
    return (
        f"step {step}: non-finite {what} ({', '.join(bad) or 'grad'}); the update was not "
        f"applied and the last checkpoint is intact (config.optim.on_nonfinite='halt')"
    )


class PeerLostError(RuntimeError):
    """Another process of a multi-process run stopped (killed, crashed, its host gone) while
    this one waited on it; the last complete checkpoint is intact."""


class WorkdirError(OSError):
    """The workdir cannot be created or written: found at start-up, before anything compiles."""


def _check_workdir(workdir: str) -> None:
    if "://" in workdir:  # a bucket: orbax/etils handle it
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only parent, ...
        parent = os.path.dirname(os.path.abspath(workdir))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        what = "a file" if os.path.isfile(parent) else "not writable"
        raise WorkdirError(
            f"--workdir {workdir} cannot be created ({e.strerror}): {parent} is {what}"
        ) from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir} is not writable")


def _global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """This process's rows -> one global array per key, laid out on the mesh's batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def write_samples(
    system: System, config: ml_collections.ConfigDict, params, step: int, workdir: str
) -> list[str]:
    """A few text-to-AV clips with the run's sampler settings, as DIR/samples/step_N[_i].mp4;
    a run trained on reference frames (`cts.ref_image_prob` > 0) starts them from the clips'
    first frames, as it will be sampled."""
    source = make_source(config)
    if config.data.source == "latents":  # captions from the manifest, frames decoded
        items = sample_items(
            source,
            config.num_sample_clips,
            system.video_codec,
            frames=config.cts.ref_image_prob > 0,
        )
    else:
        items = [source[i] for i in range(config.num_sample_clips)]
    batch = generation.prompt_batch(
        system,
        [it["video_caption"] for it in items],
        [it["audio_caption"] for it in items],
        [it.get("transcript", "") for it in items],
    )
    ref = (
        np.stack([np.asarray(it["video"][0]) for it in items])
        if config.cts.ref_image_prob > 0
        else None
    )  # [N, H, W, 3]
    frames, waves = generation.generate(
        system, params, jax.random.key(config.seed), batch, ref_image=ref
    )
    paths = []
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        for i, (video, audio) in enumerate(zip(frames, waves)):
            suffix = "" if i == 0 else f"_{i}"
            path = os.path.join(workdir, "samples", f"step_{step}{suffix}.mp4")
            write_av(path, video, config.data.fps, audio, config.data.sample_rate, overwrite=True)
            paths.append(path)
    return paths


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains to `config.total_steps`, resuming from `workdir` if it holds a checkpoint."""
    # ---- config, workdir, processes, mesh
    check_config(config, reads_data=True)  # every value, before anything is built
    enable_compile_cache(config.compile_cache_dir)
    _check_workdir(workdir)
    distributed.maybe_initialize(config.distributed)
    distributed.check_same_config(config, config.distributed.barrier_timeout_s)
    check_config(config, jax.device_count(), reads_data=True)  # and the batch over the mesh
    source = make_source(config)  # a bad data folder is named before the model is built
    mesh = make_mesh(config.mesh)
    rules = axis_rules(config)
    logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    latest = checkpointer.latest_step()  # damaged or not: a resumed run imports nothing
    if latest is not None:  # another run's checkpoint is refused before anything is built
        checkpointer.check_resumable(latest, config)

    # ---- system, parameters (born sharded), optimizer
    system = build_system(config)  # the real codecs: sampling decodes (and encodes) with them
    train_system = system
    if config.data.source == "latents":  # `harmony_jax.encode` output: the encoders never run
        train_system = latent_inputs(system, source.empty_prompt())
        logging.info(unloaded_message(config))

    def imported(params):  # a fresh run starts from the imported parts; a resumed one from its own
        if latest is None and config.init.params_from:
            return lora.run_weights(config.init.params_from, train_system, mesh, rules)
        if latest is None and config.init.video_from:
            params = load_video_tower(params, config.init.video_from)
        if latest is None and config.init.transcript_from:
            params = load_transcript(params, config.init.transcript_from)
        return params

    # a LoRA run: adapters over a frozen base, loaded (and its hash taken) on every start
    train_system, base_hash = lora.with_lora(train_system, config), []

    def base(abstract):
        params, found = lora.load_base(train_system, config, mesh, rules, abstract)
        base_hash.append(found)
        return params

    tx, state = make_train_state(train_system, config, mesh, rules, imported=imported, base=base)
    if base_hash:
        record = {"from": lora.describe(config), "hash": base_hash[0]}
        if latest is not None:  # resumed on the base it was trained on, or refused
            where = str(checkpointer.directory / str(latest))
            saved = read_run(checkpointer.directory / str(latest)).get("lora_base", {})
            lora.check_base(config, record["hash"], saved, where)
        checkpointer.base = record
        logging.info(
            "LoRA: %d trained parameters over the base %s (hash %s) of %d frozen",
            count(state.params),
            record["from"],
            record["hash"],
            count(state.frozen),
        )
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    logging.info(
        "parameters: %s",
        {
            k: int(sum(np.prod(x.shape) for x in jax.tree.leaves(v)))
            for k, v in state.params.items()
        },
    )

    checkpointer.check_space(state)  # a full disk is found now, not at the first save

    # ---- resume: a checkpoint of another model raises here, the workdir untouched; a damaged
    # step is set aside (named in a warning) and the newest intact one used
    resumed = checkpointer.restore_newest_intact(state) if latest is not None else None
    if resumed is not None:
        latest, state = resumed
        logging.info("resumed from %s at step %d", checkpointer.directory, latest)
    start = int(state.step)
    if jax.process_index() == 0:
        write_config(workdir, config)

    # ---- data: batch k is a pure function of (seed, k), so resuming replays nothing; each
    # process loads the rows of it that its devices hold
    data_sharding = batch_sharding(mesh)
    block, blocks = process_rows(data_sharding, config.batch_size)
    batches = (
        _global_batch(b, data_sharding)
        for b in make_train_iterator(
            config,
            train_system.text_encoder,
            seed=config.seed,
            start_step=start,
            block=block,
            blocks=blocks,
            transcript_tokenizer=system.transcript_tokenizer,
        )
    )

    # ---- the jitted step, compiled before the first step; processes then start it together
    # (their compiles may end minutes apart, a first collective waits 30 s)
    train_step = jax.jit(
        make_train_step(train_system, tx, config),
        in_shardings=(state_shardings, data_sharding),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )
    if start < config.total_steps:
        first = next(batches)
        train_step = train_step.lower(state, first).compile()
        batches = itertools.chain([first], batches)
        distributed.barrier("harmony_train_step_compiled", config.distributed.barrier_timeout_s)

    writer = None
    if jax.process_index() == 0:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(os.path.join(workdir, "tb"))

    # ---- loop
    halt_on_nonfinite = config.optim.on_nonfinite == "halt"
    preemption = PreemptionWatch()
    progress = Progress(start, config.total_steps, writer, show_bar=jax.process_index() == 0)
    done, peer_lost = start, False
    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            for step in range(start, config.total_steps):
                state, metrics = train_step(state, next(batches))
                progress.step()
                checkpointer.check_for_errors()  # a failed async save stops the run at once
                done = step + 1
                log_now = done % config.log_every == 0 or done == config.total_steps
                if log_now or halt_on_nonfinite:  # halting must look at every step
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if halt_on_nonfinite and not metrics["finite"]:
                        raise NonFiniteError(_nonfinite_message(done, metrics))
                if log_now:
                    progress.log(done, metrics)
                preempted = preemption.should_stop(done)
                if preempted or done % config.checkpoint_every == 0 or done == config.total_steps:
                    checkpointer.save(done, state, config)
                if preempted:
                    logging.warning("preemption notice: saved step %d; exiting", done)
                    break
                if config.sample_every and (
                    done % config.sample_every == 0 or done == config.total_steps
                ):
                    params = state.sampling_params
                    if train_system.lora is not None:  # the adapters folded into the base
                        params = merge(params, train_system.lora)
                    paths = write_samples(system, config, params, done, workdir)
                    logging.info("samples: %s", paths)
    except jax.errors.JaxRuntimeError as e:  # on several processes: a peer is gone
        if jax.process_count() == 1:
            raise
        peer_lost = True
        # read from the directory, without asking the peers: orbax renames a step into place
        # once every process has written it
        saved = steps_in(checkpointer.directory)
        raise PeerLostError(
            f"process {jax.process_index()} of {jax.process_count()}: another process stopped "
            f"during step {done + 1} ({str(e).splitlines()[0][:160]}); the last complete "
            f"checkpoint is {f'step {saved[0]}' if saved else 'none'}: restart every process "
            f"with the same command to resume"
        ) from None
    finally:  # also on a halt: pending async saves finish, the SIGTERM handler is restored
        progress.close()
        preemption.close()
        if not peer_lost:  # an async save cannot finish without its peers; orbax drops it
            checkpointer.wait()
            checkpointer.close()
        if writer is not None:
            writer.close()
    return state
