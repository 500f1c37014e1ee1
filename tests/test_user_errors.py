"""Every user mistake is one line on stderr and a non-zero exit, found before any model is built
where it can be, and nothing already written is lost.

Each case runs the entry point's own wrapper (`errors.reported_as_one_line`) in-process around
what its `main` calls, so no case compiles a model; two subprocesses check the real CLI's exit.
Checkpoint faults (damaged steps, a disk that fills) are in tests/test_checkpoint_faults.py.
"""

import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from entry_point import one_line as _one_line
from ml_collections import config_flags

from harmony_jax import errors, evaluate
from harmony_jax import sample as sample_cli
from harmony_jax.codecs import make_text_encoder
from harmony_jax.config_check import check_config
from harmony_jax.config_cli import check_argv
from harmony_jax.data.clip_folder import ClipFolder, read_captions
from harmony_jax.data.pipeline import make_train_dataset
from harmony_jax.media import write_av
from harmony_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from configs import tiny  # noqa: E402

SHAPE = dict(fps=4.0, num_frames=8, height=16, width=16, sample_rate=16000)


def _config(**overrides):
    config = tiny.get_config()
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A workdir holding a file from before; no case may build a model."""
    monkeypatch.setattr(loop, "build_system", lambda *a: pytest.fail("the check came late"))
    path = tmp_path / "run"
    path.mkdir()
    (path / "notes.txt").write_text("kept")
    yield str(path)
    assert sorted(os.listdir(path)) == ["notes.txt"]  # nothing written, nothing lost
    assert (path / "notes.txt").read_text() == "kept"


# ---- 1. config values, at load, before any model is built


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "model.remat",
            "fulll",
            "config.model.remat='fulll': expected one of 'none', 'full', 'dots', 'dots_no_batch'",
        ),
        (
            "data.source",
            "clip_foldr",
            "config.data.source='clip_foldr': expected one of "
            "'sounding_shapes', 'clip_folder', 'latents'",
        ),
        ("model.attention", "flash", "config.model.attention='flash': expected one of 'xla',"),
        (
            "optim.on_nonfinite",
            "stop",
            "config.optim.on_nonfinite='stop': expected one of 'skip', 'halt'",
        ),
        ("batch_size", 0, "config.batch_size=0: expected an integer >= 1"),
        ("checkpoint_every", 0, "config.checkpoint_every=0: expected an integer >= 1"),
        ("log_every", 0, "config.log_every=0: expected an integer >= 1"),
        (
            "model.video.patch",
            (1, 2),
            "config.model.video.patch=(1, 2): expected 3 positive integers",
        ),
        ("data.fps", math.nan, "config.data.fps=nan: expected a finite number > 0"),
        pytest.param(
            "batch_size",
            3,
            "config.batch_size=3: expected a multiple of the mesh's 8 batch shards",
            marks=pytest.mark.devices(8),
        ),
        (
            "data.colors",
            ("red", "pink"),
            "config.data.colors=('red', 'pink'): expected distinct names of red, green,",
        ),
        (
            "data.source",
            "clip_folder",
            "config.data.root='': data.source='clip_folder' needs the folder it reads",
        ),
    ],
)
def test_config_value_is_one_line_before_any_model(capsys, workdir, key, value, message):
    line = _one_line(capsys, loop.train, _config(**{key: value}), workdir)
    assert line.startswith(f"error: {message}"), line


def test_a_cosine_run_shorter_than_its_warmup_is_one_line(capsys, workdir):
    config = _config(**{"optim.schedule": "cosine", "optim.warmup_steps": 4})
    line = _one_line(capsys, loop.train, config, workdir)
    assert line.startswith(
        "error: config.total_steps=4: optim.schedule='cosine' needs more than optim.warmup_steps=4"
    ), line


def test_every_shipped_config_passes_the_check():
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if name.endswith(".py") and name != "__init__.py":
            from harmony_jax.config_cli import load_config_file

            check_config(load_config_file(os.path.join(ROOT, "configs", name)))


def test_cli_exit_code_and_one_line():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harmony_jax.train",
            "--config",
            "configs/tiny.py",
            "--workdir",
            "/nonexistent/never/made",
            "--config.checkpoint_every=0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == errors.USER_EXIT
    assert done.stderr.strip().splitlines()[-1] == (
        "error: config.checkpoint_every=0: expected an integer >= 1"
    )
    assert "Traceback" not in done.stderr
    assert not os.path.exists("/nonexistent/never")


def test_config_file_is_executed_once(tmp_path, monkeypatch):
    count, config = tmp_path / "count", tmp_path / "counting.py"
    config.write_text(
        f"from configs import tiny\n\ndef get_config():\n"
        f"    open({str(count)!r}, 'a').write('x')\n    return tiny.get_config()\n"
    )
    argv = ["train", f"--config={config}", "--config.total_steps=7"]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from there
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", flag_values=flag_values)
    check_argv(argv, flag_values=flag_values)  # what parse_flags does, then absl parses
    flag_values(argv)
    assert holder.value.total_steps == 7
    assert count.read_text() == "x"


# ---- 2. data folders


def _clip(path, audio=True, num_frames=8):
    video = np.zeros((num_frames, 16, 16, 3), np.float32)
    wave = np.zeros((int(num_frames / SHAPE["fps"] * 16000), 1), np.float32)
    write_av(path, video, SHAPE["fps"], wave if audio else None, 16000)


def _captions(root, *lines, bom=False):
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    (root / "captions.jsonl").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())


def _entry(path):
    return dict(path=path, video_caption="v", audio_caption="a")


@pytest.mark.parametrize(
    "lines, message",
    [
        (None, "captions.jsonl: no such file (config.data.root="),
        ([_entry("a.mp4"), "{oops"], r"captions.jsonl:2: bad line (JSONDecodeError"),
        (
            [_entry("a.mp4"), _entry("./a.mp4")],
            "captions.jsonl:2: clip './a.mp4' is already listed on line 1",
        ),
        (
            ['{"path": "a.mp4", "video_caption": "v", "audio_caption": "a", "path": "b.mp4"}'],
            "captions.jsonl:1: bad line (ValueError: key 'path' given twice)",
        ),
        ([""], "captions.jsonl: no clips"),
    ],
)
def test_captions_file_is_one_line_before_any_model(capsys, workdir, tmp_path, lines, message):
    data = tmp_path / "clips"
    data.mkdir()
    if lines is not None:
        _captions(data, *lines)
    config = _config(**{"data.source": "clip_folder", "data.root": str(data)})
    line = _one_line(capsys, loop.train, config, workdir)
    assert line.startswith(f"error: {data}/{message}"), line


def test_byte_order_mark_is_accepted(tmp_path):
    _captions(tmp_path, _entry("a.mp4"), bom=True)
    assert [c.path for c in read_captions(str(tmp_path))] == [str(tmp_path / "a.mp4")]


@pytest.mark.parametrize(
    "clip, message",
    [
        ("missing", "a.mp4: no such file"),
        ("silent", "a.mp4: no audio stream"),
        ("short", "a.mp4: 1.000 s of video is shorter than 8 frames"),
    ],
)
def test_unusable_clip_is_one_line_naming_it(capsys, tmp_path, clip, message):
    if clip != "missing":
        _clip(tmp_path / "a.mp4", audio=clip != "silent", num_frames=4 if clip == "short" else 8)
    _captions(tmp_path, _entry("a.mp4"))
    line = _one_line(capsys, lambda: ClipFolder(str(tmp_path), **SHAPE)[0])
    assert line.startswith(f"error: {tmp_path}/{message}"), line


def test_no_usable_clip_and_bad_clips_warn_once(capsys, tmp_path, caplog):
    _clip(tmp_path / "good.mp4")
    _clip(tmp_path / "silent.mp4", audio=False)
    _captions(tmp_path, _entry("silent.mp4"), _entry("good.mp4"))
    source = ClipFolder(str(tmp_path), skip_bad_files=True, **SHAPE)
    config = _config(batch_size=2)
    batches = iter(make_train_dataset(source, config, make_text_encoder(config), seed=0))
    with caplog.at_level(logging.WARNING):
        for _ in range(6):  # 12 items over 2 reading threads, half of them the bad clip
            next(batches)
    warnings = [r for r in caplog.records if "Skipping bad clip" in r.getMessage()]
    assert len(warnings) == 1 and "silent.mp4: no audio stream" in warnings[0].getMessage()
    _captions(tmp_path, _entry("silent.mp4"))
    line = _one_line(capsys, lambda: ClipFolder(str(tmp_path), skip_bad_files=True, **SHAPE)[0])
    assert line == f"error: no usable clip among the 1 in {tmp_path}/captions.jsonl"


# ---- 5. sample: flags and output paths, before any model is loaded


def _sample_args(tmp_path, *argv):
    return sample_cli._parser().parse_args(
        [
            "--workdir",
            str(tmp_path / "no_run"),
            "--prompt",
            "a ball",
            "--out",
            str(tmp_path / "o.mp4"),
            *argv,
        ]
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps 0: expected at least 1 sampler step"),
        (["--s_v", "nan"], "--s_v nan: expected a finite scale"),
        (["--s_a", "inf"], "--s_a inf: expected a finite scale"),
        (["--num", "0"], "--num 0: expected at least 1 clip"),
        (
            ["--out", "{tmp}/o.wav"],
            "--out {tmp}/o.wav: .wav is not a video file name; use one of "
            ".mp4, .mov, .m4v, .mkv (a .wav is written beside it)",
        ),
        (
            ["--out", "{tmp}/a_file/o.mp4"],
            "--out {tmp}/a_file/o.mp4: {tmp}/a_file is a file, not a directory",
        ),
        (["--out", "{tmp}"], "--out {tmp} is a directory; name the .mp4 to write"),
        (["--mode", "a2v"], "mode 'a2v' needs --audio"),
    ],
)
def test_sample_flag_is_one_line_before_loading(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.setattr(sample_cli, "load_for_inference", lambda *a: pytest.fail("loaded"))
    (tmp_path / "a_file").write_text("kept")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    line = _one_line(capsys, sample_cli.main, _sample_args(tmp_path, *argv))
    assert line == f"error: {message.replace('{tmp}', str(tmp_path))}"
    assert (tmp_path / "a_file").read_text() == "kept"


def test_sample_read_only_out_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sample_cli, "load_for_inference", lambda *a: pytest.fail("loaded"))
    real = os.access
    monkeypatch.setattr(
        sample_cli.os,
        "access",  # root writes through a read-only mode
        lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode),
    )
    line = _one_line(capsys, sample_cli.main, _sample_args(tmp_path))
    assert line == f"error: --out {tmp_path}/o.mp4: directory {tmp_path} is not writable"


def test_sample_missing_workdir_is_one_line(capsys, tmp_path):
    line = _one_line(capsys, sample_cli.main, _sample_args(tmp_path), code=errors.ENVIRONMENT_EXIT)
    assert line == (
        f"error: {tmp_path}/no_run: holds no checkpoint with a saved config and no config.json"
    )


# ---- evaluate and convert


def test_evaluate_finds_every_clip_container(tmp_path):
    for name in ("b.webm", "a.mkv", "c.MP4", "d.mov", "notes.txt", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"")
    assert [os.path.basename(p) for p in evaluate.clip_paths(str(tmp_path))] == [
        "a.mkv",
        "b.webm",
        "c.MP4",
        "d.mov",
    ]


@pytest.mark.parametrize(
    "max_lag, message",
    [
        ("nan", "--max_lag nan: expected a finite number of seconds > 0"),
        ("-1", "--max_lag -1.0: expected a finite number of seconds > 0"),
        ("100", "--max_lag 100.0: not shorter than {clip} ("),
    ],
)
def test_evaluate_max_lag_is_one_line(capsys, tmp_path, max_lag, message):
    clip = tmp_path / "c.mp4"
    _clip(clip)
    args = evaluate._parser().parse_args([str(clip), "--max_lag", max_lag])
    line = _one_line(capsys, evaluate.main, args)
    assert line.startswith(f"error: {message.replace('{clip}', str(clip))}"), line


@pytest.mark.parametrize(
    "src, message",
    [
        (
            None,
            "error: --src is required (usage: python -m harmony_jax.convert "
            "{wan|wan-vae|umt5|mmaudio-vae|bigvgan|f5-text} --src DIR --dst DIR, "
            "or merge-lora --workdir RUN --dst DIR)",
        ),
        ("missing", "error: {tmp}/missing: no such checkpoint file or directory"),
    ],
)
def test_convert_is_one_line(tmp_path, src, message):
    argv = ["--dst", str(tmp_path / "out"), "--config", "configs/tiny.py"]
    argv += ["--src", str(tmp_path / src)] if src else []
    done = subprocess.run(
        [sys.executable, "-m", "harmony_jax.convert", "wan", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [message.replace("{tmp}", str(tmp_path))]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mesh="data=x"), "--mesh 'data=x': data='x' is not an integer"),
        (
            dict(mesh="data=8", batch=3),
            "config.batch_size=3: expected a multiple of the mesh's 8 batch shards",
        ),
        (
            dict(
                mesh="data=2",
                remat="none",
                devices=2,
                batch=2,
                inputs="latents",
                hbm_gib=0.0,
                config_overrides={"model.attention": "flash"},
            ),
            "config.model.attention='flash': expected one of",
        ),
    ],
)
def test_plan_is_one_line_before_compiling(capsys, monkeypatch, kwargs, message):
    from harmony_jax import plan

    monkeypatch.setattr(plan, "plan_train_step", lambda *a, **k: pytest.fail("compiled"))
    config = _config(**kwargs.pop("config_overrides", {}))
    line = _one_line(capsys, lambda: plan.run(config, **kwargs))
    assert line.startswith(f"error: {message}"), line


# ---- the switch, and bugs


def test_traceback_switch_and_bugs_keep_theirs(monkeypatch, capsys):
    def user():
        raise errors.ConfigError("config.x=1: expected 2")

    monkeypatch.setenv(errors.TRACEBACK_ENV, "1")
    with pytest.raises(errors.ConfigError):  # raised as is: absl prints its traceback
        errors.reported_as_one_line(user)()
    monkeypatch.delenv(errors.TRACEBACK_ENV)
    assert _one_line(capsys, user) == "error: config.x=1: expected 2"
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error
        errors.reported_as_one_line(lambda: 1 / 0)()
    full = OSError(28, "No space left on device", "/data/ckpt")
    assert (
        _one_line(capsys, lambda: (_ for _ in ()).throw(full), code=errors.ENVIRONMENT_EXIT)
        == "error: /data/ckpt: No space left on device"
    )
