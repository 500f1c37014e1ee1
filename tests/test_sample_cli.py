"""The sample CLI end to end on a checkpoint trained for one step of the tiny config: every mode
read back from its .mp4, kept modalities, fitted inputs, and the errors a user can cause."""

import logging
import os
import subprocess
import sys
import wave

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from clips import read_all
from jax.sharding import PartitionSpec as P

from harmony_jax import generation, media
from harmony_jax import sample as sample_cli
from harmony_jax.data.sounding_shapes import SoundingShapes
from harmony_jax.inference import inference_mesh, load_for_inference, read_audio, read_video
from harmony_jax.media import MediaError, write_av, write_wav
from harmony_jax.parallel import ulysses
from harmony_jax.quantize import is_quantized, param_bytes
from harmony_jax.sample import sample_to_files
from harmony_jax.system import System
from harmony_jax.training.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from configs import tiny  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, trained state): two steps (the first has a zero learning rate), with EMA so
    the loader has a choice to make."""
    config = tiny.get_config()
    config.total_steps = config.checkpoint_every = 2
    config.optim.ema_decay = 0.5
    workdir = str(tmp_path_factory.mktemp("run"))
    return workdir, train(config, workdir)


@pytest.fixture(scope="module")
def model(run):
    """The trained parameters as saved (float32), on one device: the reference of the sharded
    and bfloat16 loads below."""
    return load_for_inference(run[0], dtype="float32", devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def clip(model):
    """A sounding-shapes clip in the tiny config's geometry."""
    d = model[0].clip
    world = SoundingShapes(
        num_clips=4,
        fps=d.fps,
        num_frames=d.num_frames,
        height=d.height,
        width=d.width,
        sample_rate=d.sample_rate,
        seed=7,
    )
    return world[0]


def _wav_pcm(path):
    with wave.open(str(path)) as f:
        return f.getframerate(), np.frombuffer(f.readframes(f.getnframes()), "<i2")


def _check_clip(system, mp4):
    """The .mp4 has both streams in the run's geometry, and its .wav the whole clip."""
    d = system.clip
    frames, fps, audio, rate = read_all(mp4)
    assert frames.shape == (d.num_frames, d.height, d.width, 3)
    assert fps == d.fps and rate == d.sample_rate
    assert audio.shape == (system.num_samples, 1)
    assert len(audio) / rate == pytest.approx(d.num_frames / d.fps)
    wav_rate, pcm = _wav_pcm(os.path.splitext(mp4)[0] + ".wav")
    assert wav_rate == d.sample_rate and len(pcm) == system.num_samples
    return frames, audio[:, 0]


def test_loader_prefers_ema_params(run, model):
    _, state = run
    _, params = model
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(state.ema_params))
    assert not all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params))
    )
    step_dir = os.path.join(run[0], "checkpoints", "2")
    jax.tree.map(
        np.testing.assert_array_equal, params, load_for_inference(step_dir, dtype="float32")[1]
    )


def test_t2av_writes_every_clip(model, tmp_path):
    system, params = model
    paths = sample_to_files(system, params, str(tmp_path / "t.mp4"), prompt="a red ball", num=2)
    assert paths == [str(tmp_path / "t.mp4"), str(tmp_path / "t_1.mp4")]
    first, second = (_check_clip(system, p)[0] for p in paths)
    assert not np.array_equal(first, second)  # clip i has its own noise


def test_a2v_keeps_the_audio(model, clip, tmp_path):
    system, params = model
    d = system.clip
    given = tmp_path / "given.wav"
    write_wav(given, clip["audio"], d.sample_rate)
    (mp4,) = sample_to_files(
        system,
        params,
        str(tmp_path / "a.mp4"),
        mode="a2v",
        audio=str(given),
        prompt=clip["video_caption"],
    )
    _, audio = _check_clip(system, mp4)
    np.testing.assert_array_equal(_wav_pcm(tmp_path / "a.wav")[1], _wav_pcm(given)[1])
    np.testing.assert_allclose(audio, clip["audio"], atol=0.01)  # AAC


def test_v2a_keeps_the_frames(model, clip, tmp_path):
    system, params = model
    d = system.clip
    given = tmp_path / "given.mp4"
    write_av(given, clip["video"], d.fps)  # no audio: v2a needs none
    (mp4,) = sample_to_files(
        system,
        params,
        str(tmp_path / "v.mp4"),
        mode="v2a",
        video=str(given),
        prompt=clip["video_caption"],
    )
    frames, _ = _check_clip(system, mp4)
    # The kept frames, H.264-coded once more: exactly what writing them again gives.
    write_av(tmp_path / "again.mp4", read_all(given)[0], d.fps)
    np.testing.assert_array_equal(frames, read_all(tmp_path / "again.mp4")[0])


def test_reference_image_and_voice(model, clip, tmp_path):
    system, params = model
    d = system.clip
    image, voice = tmp_path / "ref.png", tmp_path / "voice.wav"
    matplotlib.image.imsave(image, (clip["video"][0] + 1.0) / 2.0)
    write_wav(voice, np.tile(clip["audio"], 3)[: 5 * d.sample_rate], d.sample_rate)
    (mp4,) = sample_to_files(
        system,
        params,
        str(tmp_path / "r.mp4"),
        image=str(image),
        ref_audio=str(voice),
        guidance="cfg",
        prompt="a ball",
    )
    frames, _ = _check_clip(system, mp4)
    ref = read_all(image)[0][0].astype(float)
    assert np.abs(frames[0] - ref).mean() < 8  # the clean first frame, H.264-coded


def test_inputs_are_fitted_with_a_notice(model, clip, tmp_path, caplog):
    d = model[0].clip
    stereo = np.stack([clip["audio"], -clip["audio"]], axis=1)[:20000]
    write_wav(tmp_path / "in.wav", stereo, 22050)
    big = np.repeat(np.repeat(clip["video"], 3, axis=1), 2, axis=2)  # [F, 3H, 2W, 3]
    write_av(
        tmp_path / "in.mp4", np.repeat(big, 2, axis=0), 2 * d.fps, clip["audio"], d.sample_rate
    )
    with caplog.at_level(logging.WARNING):
        audio = read_audio(tmp_path / "in.wav", d.sample_rate, model[0].num_samples)
        video = read_video(tmp_path / "in.mp4", d.fps, d.num_frames, d.height, d.width)
    assert audio.shape == (model[0].num_samples,)
    assert np.all(audio[-1000:] == 0)  # 0.9 s given, zero-padded to 2 s
    assert video.shape == (d.num_frames, d.height, d.width, 3)
    soundtrack = read_audio(tmp_path / "in.mp4", d.sample_rate, model[0].num_samples)
    np.testing.assert_allclose(soundtrack, clip["audio"], atol=0.01)  # AAC
    log = caplog.text
    for notice in (
        "downmixed",
        "resampled from 22050 Hz",
        "zero-padded",
        "fps resampled",
        "centre-cropped",
    ):
        assert notice in log


def test_impossible_inputs_name_the_file(model, clip, tmp_path):
    system, params = model
    d = system.clip
    silent, garbage = tmp_path / "silent.mp4", tmp_path / "garbage.png"
    write_av(silent, clip["video"], d.fps)
    garbage.write_bytes(b"not an image")
    out, prompt = str(tmp_path / "o.mp4"), "a ball"
    with pytest.raises(MediaError, match=f"{silent}: no audio stream"):
        sample_to_files(system, params, out, mode="a2v", audio=str(silent), prompt=prompt)
    with pytest.raises(MediaError, match=f"{garbage}: cannot decode"):
        sample_to_files(system, params, out, image=str(garbage), prompt=prompt)
    with pytest.raises(MediaError, match="missing.wav: no such file"):
        sample_to_files(
            system, params, out, mode="a2v", audio=str(tmp_path / "missing.wav"), prompt=prompt
        )
    with pytest.raises(ValueError, match="needs --video"):
        sample_to_files(system, params, out, mode="v2a", prompt=prompt)
    assert not os.path.exists(out)


def test_cli_keeps_existing_outputs(run, tmp_path):
    out = tmp_path / "cli.mp4"
    cmd = [
        sys.executable,
        "-m",
        "harmony_jax.sample",
        "--checkpoint",
        os.path.join(run[0], "checkpoints", "2"),
        "--prompt",
        "a green ball",
        "--out",
        str(out),
    ]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".jax_cache"))
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.exists() and (tmp_path / "cli.wav").exists()
    before = out.read_bytes()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"{out} exists; pass --overwrite" in done.stderr
    assert out.read_bytes() == before


def test_empty_prompt_is_refused(model, tmp_path, capsys):
    system, params = model
    out = str(tmp_path / "e.mp4")
    with pytest.raises(ValueError, match="video caption 0 is empty"):
        sample_to_files(system, params, out, prompt="  ")
    with pytest.raises(ValueError, match="audio caption 0 is empty"):
        sample_to_files(system, params, out, prompt="a ball", audio_prompt="")
    with pytest.raises(ValueError, match="video caption 1 is empty"):
        generation.prompt_batch(system, ["a ball", ""])
    assert not os.listdir(tmp_path)
    for argv in (["--prompt", ""], []):  # empty, or not given
        with pytest.raises(SystemExit):
            sample_cli._parser().parse_args(["--workdir", "w", "--out", out, *argv])
        assert "--prompt" in capsys.readouterr().err


def test_cli_interrupted_write_keeps_the_old_file_and_leaves_no_other(run, tmp_path, monkeypatch):
    out = tmp_path / "i.mp4"
    out.write_bytes(b"the clip of an earlier run")
    calls, real_mux = [], media._mux_audio

    def interrupted_mux(*args):  # Ctrl-C while the mp4 is half written
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_mux(*args)

    monkeypatch.setattr(media, "_mux_audio", interrupted_mux)
    args = sample_cli._parser().parse_args(
        [
            "--checkpoint",
            os.path.join(run[0], "checkpoints", "2"),
            "--prompt",
            "a ball",
            "--out",
            str(out),
            "--overwrite",
        ]
    )
    with pytest.raises(KeyboardInterrupt):
        sample_cli.main(args)
    assert len(calls) == 2
    assert os.listdir(tmp_path) == ["i.mp4"]  # no .wav, no temporary file
    assert out.read_bytes() == b"the clip of an earlier run"


def test_heldout_sync_evaluation_rows(model, tmp_path):
    """The demo's and bench's scorer: every mode beside its shuffled baseline and the truth."""
    from harmony_jax.eval.heldout import evaluate_sync

    system, params = model
    kept = {}
    rows = evaluate_sync(system, params, 2, out_dir=str(tmp_path), guidance="none", keep=kept)
    assert list(kept) == ["ground truth", "t2av", "a2v", "v2a"]  # the contact sheet's clips
    assert all(len(frames) == len(waves) == 2 for frames, waves in kept.values())
    assert set(rows) == {"ground truth", "ground truth, shuffled"} | {
        f"{m} {kind}" for m in ("t2av", "a2v", "v2a") for kind in ("generated", "shuffled")
    }
    assert all(len(clips) == 2 for clips in rows.values())
    assert np.mean([c["event_f1"] for c in rows["ground truth"]]) > 0.9
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"{m}_{i}.mp4" for m in ("t2av", "a2v", "v2a") for i in range(2)
    )


def _latents(system, params):
    """Clean latents of one SyncCFG t2av clip (2 steps: the sharded sampler is compiled once
    per mesh) and its decoded frames."""
    batch = generation.prompt_batch(system, ["a red ball bounces"])
    video, audio = generation.sample_latents(system, params, jax.random.key(3), batch, steps=2)
    return np.asarray(video), np.asarray(audio), system.video_codec.decode(video)


@pytest.fixture(scope="module")
def reference(model):
    return _latents(*model)


@pytest.mark.parametrize(
    "mesh,shape,q_spec",
    [
        ("data=2,fsdp=2,tensor=2", dict(data=2, fsdp=2, tensor=2), P(None, "fsdp", "tensor")),
        (  # Ulysses over 'sequence'; the parameters' 'embed' axis is split over it too
            "data=2,sequence=2",
            dict(data=2, fsdp=2, sequence=2, tensor=1),
            P(None, ("fsdp", "sequence"), "tensor"),
        ),
    ],
)
@pytest.mark.devices(8)
def test_sharded_sampling_matches_one_device(run, reference, mesh, shape, q_spec, monkeypatch):
    """One compile per mesh: the parameters lie as the training rules say, SyncCFG's 3B rows go
    into and come out of the denoiser split over data x fsdp, the video's self-attention runs
    Ulysses where `sequence` > 1, and the clip is the one-device clip."""
    calls, real = [], ulysses.ulysses_attention
    monkeypatch.setattr(
        ulysses, "ulysses_attention", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    rows, denoiser = [], System.denoiser

    def inspected(self, params):  # records the layout XLA gave the batched call's rows
        net = denoiser(self, params)

        def call(video, audio, t_video, t_audio, cond):
            record = lambda what: lambda s: rows.append((what, video.shape[0], s.spec))
            jax.debug.inspect_array_sharding(video, callback=record("in"))
            v_video, v_audio = net(video, audio, t_video, t_audio, cond)
            jax.debug.inspect_array_sharding(v_video, callback=record("out"))
            return v_video, v_audio

        return call

    monkeypatch.setattr(System, "denoiser", inspected)
    system, params = load_for_inference(run[0], mesh=mesh, dtype="float32")
    leaves = jax.tree.leaves(params)
    assert {dict(leaf.sharding.mesh.shape) == shape for leaf in leaves} == {True}
    split = [leaf for leaf in leaves if leaf.addressable_shards[0].data.shape != leaf.shape]
    assert len(split) > len(leaves) // 4  # the training rules split the weights
    q = params["dit"]["layers"]["video_block"]["self_attn"]["q"]["kernel"]  # [layers, D, D]
    assert q.sharding.spec == q_spec
    video, audio, frames = _latents(system, params)
    assert [(what, n, spec[0]) for what, n, spec in rows] == [
        ("in", 3, ("data", "fsdp")),
        ("out", 3, ("data", "fsdp")),
    ]
    assert bool(calls) == ("sequence" in shape)  # the video's self-attention ran Ulysses
    ref_video, ref_audio, ref_frames = reference
    print(
        f"{mesh} vs one device: frames max {np.abs(frames - ref_frames).max():.2g}, audio "
        f"latents max {np.abs(audio - ref_audio).max():.2g}"
    )
    # Measured: frames differ by at most 4.2e-6 (of [-1, 1]), audio latents by 4.8e-6 (the
    # sums run in another order); the waveform is Griffin-Lim of these latents.
    assert np.abs(frames - ref_frames).max() < 1e-4
    np.testing.assert_allclose(audio, ref_audio, atol=1e-4)
    np.testing.assert_allclose(video, ref_video, atol=1e-4)


def test_bfloat16_weights_against_float32(run, model, reference):
    system, params = load_for_inference(run[0], devices=jax.devices()[:1])  # the default dtype
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    video, audio, frames = _latents(system, params)
    assert video.dtype == audio.dtype == np.float32  # the sampler's state stays float32
    ref_video, ref_audio, ref_frames = reference
    err = np.abs(frames - ref_frames)
    print(
        f"bf16 vs f32: frames max {err.max():.4f} mean {err.mean():.5f}, audio latents max "
        f"{np.abs(audio - ref_audio).max():.4f}"
    )
    assert err.max() < 0.1 and err.mean() < 0.01  # measured: max 0.031, mean 0.0024
    assert np.abs(audio - ref_audio).max() < 0.1  # measured: 0.027


def test_int8_weights_against_float32(run, model, reference):
    """--quantize int8 (bfloat16 elsewhere): every Dense kernel is held as int8 with one scale
    per layer and output channel, and the clip stays close to float32's."""
    system, params = load_for_inference(run[0], quantize="int8", devices=jax.devices()[:1])
    kernels = [x for x in jax.tree.leaves(params, is_leaf=is_quantized) if is_quantized(x)]
    assert len(kernels) > 40
    q = params["dit"]["layers"]["video_block"]["self_attn"]["q"]["kernel"]  # [layers, D, D]
    assert q.array.qvalue.dtype == jnp.int8 and q.array.scale.shape == (2, 1, q.shape[-1])
    assert {k.array.qvalue.dtype for k in kernels} == {jnp.dtype(jnp.int8)}
    assert all(k.array.qvalue.addressable_shards[0].data.dtype == jnp.int8 for k in kernels)
    # one byte per kernel weight where bfloat16 takes two, plus float32 scales
    bf16 = param_bytes(model[1]) // 2  # float32 as saved
    scales = sum(k.array.scale.size * 4 for k in kernels)
    assert param_bytes(params) == bf16 - sum(k.array.qvalue.size for k in kernels) + scales
    video, audio, frames = _latents(system, params)
    ref_video, ref_audio, ref_frames = reference
    err = np.abs(frames - ref_frames)
    print(
        f"int8 vs f32: frames max {err.max():.4f} mean {err.mean():.5f}, audio latents max "
        f"{np.abs(audio - ref_audio).max():.4f}; parameters {param_bytes(params)} bytes, "
        f"bf16 {bf16}, f32 {param_bytes(model[1])}"
    )
    assert err.max() < 0.15 and err.mean() < 0.015  # measured: max 0.062, mean 0.0055
    assert np.abs(audio - ref_audio).max() < 0.1  # measured: 0.037


@pytest.mark.devices(8)
def test_mesh_flag_errors_name_it():
    devices = jax.devices()
    assert inference_mesh(None, devices) == dict(
        data=1, fsdp=8, sequence=1, tensor=1, dcn_data=1, dcn_fsdp=1
    )
    assert inference_mesh("data=-1,fsdp=2", devices)["data"] == 4
    for spec, message in (
        ("fsdp=3", "--mesh 'fsdp=3' over 8 devices"),
        ("pipeline=2", "'pipeline' is not one of"),
        ("tensor=two", "tensor='two' is not an integer"),
    ):
        with pytest.raises(ValueError, match=message):
            inference_mesh(spec, devices)
    with pytest.raises(ValueError, match="--dtype 'float16'"):
        load_for_inference("nowhere", dtype="float16")


@pytest.mark.devices(8)
def test_cli_mesh_and_dtype_errors_are_one_line(run, tmp_path, capsys):
    step = os.path.join(run[0], "checkpoints", "2")
    for flags, message in (
        (["--mesh", "fsdp=3"], "error: --mesh 'fsdp=3' over 8 devices"),
        (["--mesh", "pipe=2"], "error: --mesh 'pipe=2': 'pipe' is not one"),
    ):
        args = sample_cli._parser().parse_args(
            ["--checkpoint", step, "--prompt", "a ball", "--out", str(tmp_path / "m.mp4"), *flags]
        )
        with pytest.raises(SystemExit) as exit_info:
            sample_cli.main(args)
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), lines
    with pytest.raises(SystemExit):
        sample_cli._parser().parse_args(
            ["--workdir", "w", "--prompt", "a", "--out", "o.mp4", "--dtype", "float16"]
        )
    assert not os.listdir(tmp_path)


@pytest.mark.devices(8)
def test_evaluate_cli_loads_the_run_as_sample_does(run, tmp_path, monkeypatch, capsys):
    """`evaluate --checkpoint` takes sample's --mesh/--dtype/--quantize (one definition) to the
    loader and prints the held-out sync table; clips and a model at once are refused."""
    from harmony_jax import evaluate as evaluate_cli

    flags = lambda parser: {
        a.dest: (a.help, a.choices, a.default)
        for a in parser._actions
        if a.dest in ("mesh", "dtype", "quantize", "lora_base")
    }
    assert flags(evaluate_cli._parser()) == flags(sample_cli._parser())
    assert len(flags(sample_cli._parser())) == 4
    seen = {}

    def rows(system, params, num_clips, out_dir=None):
        mesh = jax.tree.leaves(params)[0].sharding.mesh
        seen.update(params=params, num_clips=num_clips, mesh=dict(mesh.shape))
        return {"t2av generated": [dict(event_f1=0.5, mean_abs_offset_ms=20.0, av_offset_ms=0.0)]}

    monkeypatch.setattr(evaluate_cli, "evaluate_sync", rows)
    step = os.path.join(run[0], "checkpoints", "2")
    out = tmp_path / "sync.json"
    argv = ["--checkpoint", step, "--num_clips", "3", "--mesh", "fsdp=2,tensor=4"]
    args = evaluate_cli._parser().parse_args([*argv, "--quantize", "int8", "--json", str(out)])
    evaluate_cli.main(args)
    q = seen["params"]["dit"]["layers"]["video_block"]["self_attn"]["q"]["kernel"]
    assert is_quantized(q) and q.array.qvalue.sharding.spec == P(None, "fsdp", "tensor")
    assert seen["num_clips"] == 3 and (seen["mesh"]["fsdp"], seen["mesh"]["tensor"]) == (2, 4)
    assert "t2av generated" in capsys.readouterr().out
    assert '"quantize": "int8"' in out.read_text()
    for extra, message in (
        ([str(tmp_path)], "give one of PATH (clips), --workdir or --checkpoint"),
        (["--plot", str(tmp_path / "p.png")], "--plot measures clips (PATH)"),
    ):
        with pytest.raises(SystemExit):
            evaluate_cli.main(evaluate_cli._parser().parse_args([*argv, *extra]))
        assert message in capsys.readouterr().err


def test_heldout_rows_read_the_balls_and_the_curve_has_a_row_per_checkpoint(run, model):
    from harmony_jax.eval.curve import curve, header
    from harmony_jax.eval.heldout import evaluate_sync

    system, params = model
    rows = evaluate_sync(system, params, 2, modes=("v2a",), guidance="none", steps=2)
    assert [c["balls_right"] for c in rows["ground truth"]] == [1.0, 1.0]
    assert [c["smooth"] for c in rows["ground truth"]] == [1.0, 1.0]
    assert [c["balls_right"] for c in rows["v2a generated"]] == [1.0, 1.0]  # its frames: given
    lines = []
    points = curve(run[0], 1, echo=lines.append)
    assert [p["step"] for p in points] == [2] and len(lines) == 1
    assert len(lines[0].split()) == 1 + 2 * 3  # the step, then F1/shuffled and balls per mode
    assert len(header().split()) == 1 + 4 * 3  # column titles are two words


def test_diagnostics_of_a_run(model):
    """The tiny config has no absolute position: its constant-input x0 is the same everywhere;
    the optimal denoiser of the measured clips is exact near sigma 0."""
    from harmony_jax.eval import diagnostics

    system, params = model
    d = system.clip
    world = SoundingShapes(2, d.fps, d.num_frames, d.height, d.width, d.sample_rate, seed=0)
    clips = [world[i] for i in range(2)]
    captions = [c["video_caption"] for c in clips]
    batch = {
        k: jnp.asarray(v)
        for k, v in generation.prompt_batch(
            system, captions, [c["audio_caption"] for c in clips]
        ).items()
    }
    media = {k: jnp.asarray(np.stack([c[k] for c in clips])) for k in ("video", "audio")}
    video, audio = system.encode_media(media)
    model_std, real_std = diagnostics.position_std(system, params, batch | media, audio)
    assert model_std < 1e-4 < real_std
    rows = diagnostics.per_sigma(system, params, batch, video, audio, captions)
    assert [r[0] for r in rows] == list(diagnostics.SIGMAS) and rows[0][2] < 1e-6
    own, swapped = diagnostics.text_path(system, params, world, 2, video, audio)
    assert 0.0 <= swapped <= 1.0 and 0.0 <= own <= 1.0


def test_optimal_denoiser_is_the_posterior_mean_over_clips_sharing_the_prompt():
    from harmony_jax.eval.diagnostics import optimal_x0

    clips = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    same = np.array([[True, True, False], [True, True, False], [False, False, True]])
    near = optimal_x0(0.99 * clips + 0.01 * 0.1, clips, 0.01, same)  # tiny sigma: the clip
    np.testing.assert_allclose(near, clips, atol=1e-6)
    far = optimal_x0(np.zeros_like(clips), clips, 1.0 - 1e-9, same)  # all noise: the mean
    np.testing.assert_allclose(far[0], clips[:2].mean(0), atol=1e-6)
    np.testing.assert_allclose(far[2], clips[2], atol=1e-6)
