"""LoRA fine-tuning on the tiny config: adapters over a frozen base run, exact at init, only the
trained leaves move, optimizer state of those alone, exact resume, merged weights, refusals."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from entry_point import one_line
from etils import epath
from flax.linen import unbox

from configs import tiny
from harmony_jax.config_check import check_config
from harmony_jax.convert.merge_lora import merge_run
from harmony_jax.errors import ConfigError, FlagError
from harmony_jax.inference import load_for_inference
from harmony_jax.model import lora
from harmony_jax.model.inputs import example_inputs
from harmony_jax.plan import format_plan, plan_train_step
from harmony_jax.system import build_system
from harmony_jax.training.checkpoint import Checkpointer, CheckpointMismatchError
from harmony_jax.training.loop import train
from harmony_jax.training.lora import BaseMismatchError, with_lora
from harmony_jax.training.step import make_loss_fn

TRAIN_ALSO = "^dit/layers/interaction/a2v/"


def _lora_config(base: str, **overrides):
    c = tiny.get_config()
    c.total_steps = 2
    c.lora.rank, c.lora.alpha, c.lora.dropout = 4, 8.0, 0.1
    c.lora.train_also = TRAIN_ALSO
    c.init.base_from = base
    c.optim.ema_decay = 0.5
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A plain tiny run of 2 steps, a checkpoint at each: the base (step 2) and another."""
    c = tiny.get_config()
    c.total_steps, c.checkpoint_every = 2, 1
    workdir = tmp_path_factory.mktemp("base")
    train(c, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def lora_run(base_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lora")
    return workdir, train(_lora_config(str(base_run)), str(workdir))


def _flat(tree):
    return {k: np.asarray(v) for k, v in lora.flat(jax.device_get(tree)).items()}


def _outputs(system, params):
    """The denoiser's (video, audio) velocities on fixed random inputs."""
    (tv, h, w, _), (ta, _) = system.video_latent_shape, system.audio_latent_shape
    inputs = example_inputs(
        system.model_config,
        batch=2,
        video_frames=tv,
        height=h,
        width=w,
        audio_frames=ta,
        audio_rate=system.audio_codec.latent_rate,
    )
    return jax.jit(lambda p: system.denoiser(p)(*inputs))(params)


def _zeros(system, batch=1):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), system.example_batch(batch))


def _no_dropout(system):
    return dataclasses.replace(system, lora=dataclasses.replace(system.lora, dropout=0.0))


def test_only_trained_leaves_move_and_hold_optimizer_state(base_run, lora_run):
    _, state = lora_run
    base = _flat(load_for_inference(base_run, dtype="float32")[1])
    trained, frozen = _flat(state.params), _flat(state.frozen)
    assert set(trained) & set(frozen) == set()
    assert set(frozen) | {k for k in trained if not lora.is_adapter(k)} == set(base)
    for path, value in frozen.items():  # the base, bit for bit
        np.testing.assert_array_equal(value, base[path], err_msg=path)
    also = [k for k in trained if not lora.is_adapter(k)]
    assert also and all(k.startswith(TRAIN_ALSO[1:]) for k in also)
    assert any(not np.array_equal(trained[k], base[k]) for k in also)
    assert all(np.any(trained[k] != 0) for k in trained if k.endswith("_lora_b"))
    # Adam's two moments and the EMA: of the trained leaves only, in their shapes
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert sorted(x.shape for x in moments) == sorted(2 * [v.shape for v in trained.values()])
    assert set(_flat(state.ema_params)) == set(trained)


def test_adapted_model_is_the_base_at_init_and_merges_exactly(base_run, lora_run):
    _, state = lora_run
    config = _lora_config(str(base_run))
    system = with_lora(build_system(config), config)
    adapted, plain = _no_dropout(system), dataclasses.replace(system, lora=None)
    params = state.sampling_params
    zero_b = lambda k, v: jnp.zeros_like(v) if k.endswith("_lora_b") else v
    at_init = lora.unflat({k: zero_b(k, v) for k, v in lora.flat(params).items()})
    for a, b in zip(_outputs(adapted, at_init), _outputs(plain, lora.without_adapters(at_init))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    merged = lora.merge(params, system.lora)
    for a, b in zip(_outputs(adapted, params), _outputs(plain, merged)):
        assert np.abs(np.asarray(a)).max() > 0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_resume_continues_exactly(base_run, lora_run, tmp_path):
    _, full = lora_run
    first = train(_lora_config(str(base_run), total_steps=1), str(tmp_path))
    assert int(first.step) == 1
    resumed = train(_lora_config(str(base_run)), str(tmp_path))
    assert int(resumed.step) == 2
    for tree in ("params", "opt_state", "ema_params", "frozen"):
        a, b = getattr(full, tree), getattr(resumed, tree)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=tree)


def test_checkpoint_references_the_base_and_merge_lora_writes_a_plain_run(
    base_run, lora_run, tmp_path
):
    workdir, state = lora_run
    step = epath.Path(workdir) / "checkpoints" / "2"
    record = json.loads((step / "run" / "metadata").read_text())["lora_base"]
    assert record["from"] == str(base_run) and len(record["hash"]) == 16
    saved = json.loads((step / "state" / "_METADATA").read_text())["tree_metadata"]
    assert saved and not any("frozen" in k for k in saved)  # the base is not copied
    system, loaded = load_for_inference(workdir, dtype="float32")
    assert system.lora is None  # plain weights, the adapters merged
    expected = _flat(
        lora.merge(state.sampling_params, with_lora(system, _lora_config(str(base_run))).lora)
    )
    got = _flat(loaded)
    assert set(got) == set(expected)
    for k in got:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-7, err_msg=k)
    merged = merge_run(str(workdir), str(tmp_path / "merged"))
    assert merged.name == "2"
    _, again = load_for_inference(tmp_path / "merged", dtype="float32")
    for k, v in _flat(again).items():
        np.testing.assert_array_equal(v, got[k], err_msg=k)


def test_a_missing_or_another_base_is_refused_naming_both(base_run, lora_run, tmp_path, capsys):
    workdir, _ = lora_run
    moved = tmp_path / "moved"
    shutil.move(str(base_run), str(moved))
    try:  # what `sample --workdir` prints: one line, exit status 2
        missing = one_line(capsys, load_for_inference, workdir)
        _, found = load_for_inference(workdir, dtype="float32", lora_base=str(moved))
        wrong = str(moved / "checkpoints" / "1")  # another model: refused by its hash
        with pytest.raises(BaseMismatchError, match="hash"):
            load_for_inference(workdir, dtype="float32", lora_base=wrong)
    finally:
        shutil.move(str(moved), str(base_run))
    assert str(base_run) in missing and str(workdir) in missing and "missing" in missing
    _, recorded = load_for_inference(workdir, dtype="float32")
    for a, b in zip(jax.tree.leaves(found), jax.tree.leaves(recorded)):  # `sample --lora_base`
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FlagError, match="no LoRA run"):
        load_for_inference(base_run, lora_base=str(base_run))
    other = base_run / "checkpoints" / "1"  # the base run's other step: other weights
    with pytest.raises(BaseMismatchError) as mismatch:
        train(_lora_config(str(other), total_steps=3), str(workdir))
    message = str(mismatch.value)
    assert str(base_run) in message and str(other) in message and "hash" in message


def test_config_mistakes_are_named():
    c = _lora_config("")
    for key, value, words in (
        ("targets", "(", "lora.targets"),
        ("dropout", 1.0, "lora.dropout"),
        ("alpha", 0.0, "lora.alpha"),
    ):
        bad = _lora_config("")
        bad.lora[key] = value
        with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
            check_config(bad)
    plain = tiny.get_config()
    plain.init.base_from = "/somewhere"
    with pytest.raises(ConfigError, match=r"init\.base_from.*lora\.rank"):
        check_config(plain)
    c.lora.targets = "^dit/no_such_layer/"
    with pytest.raises(ConfigError, match=r"lora\.targets.*matches no parameter"):
        with_lora(build_system(c), c)
    c.lora.targets, c.lora.train_also = tiny.get_config().lora.targets, "^nothing"
    with pytest.raises(ConfigError, match=r"lora\.train_also.*matches no parameter"):
        with_lora(build_system(c), c)
    c.lora.train_also = ""
    c.lora.targets = "^dit/transcript/convnext_0/dwconv/kernel$"  # a convolution, not x W
    with pytest.raises(ConfigError, match="no Dense kernel"):
        with_lora(build_system(c), c)


def test_adapters_keep_a_bfloat16_models_dtype():
    """qwix's float32 adapter term must not promote a bf16 block's output (nn.scan's carry
    would then change dtype and the model not build)."""
    c = _lora_config("")
    c.model.dtype = "bfloat16"
    system = with_lora(build_system(c), c)
    params = jax.eval_shape(system.init, jax.random.key(0), system.example_batch(1))
    video, audio = jax.eval_shape(lambda p: _outputs(_no_dropout(system), p), unbox(params))
    assert video.dtype == audio.dtype == jnp.float32  # the heads' outputs, as without LoRA


@pytest.mark.slow
def test_audio_driven_video_alone_trains_the_adapters_and_plan_sizes_them():
    """cts.fractions (0, 1, 0): LTX-2's a2v_lora. The A2V rows' loss reaches the video
    tower's adapters (B's gradient), never the frozen base; plan counts the base apart, in
    lora.base_dtype."""
    c = _lora_config("")
    c.lora.dropout = 0.0
    c.cts.fractions = (0.0, 1.0, 0.0)
    system = with_lora(build_system(c), c)
    params = unbox(system.init(jax.random.key(0), _zeros(system)))
    trained, frozen = lora.split(params, system.lora)
    loss = make_loss_fn(system, c)
    batch = _zeros(system, batch=2)
    grad = jax.jit(jax.grad(lambda t: loss(lora.combine(frozen, t), batch, jax.random.key(1))[0]))
    flat = _flat(grad(trained))
    # (the captions of a zero batch are all masked: the cross-attention's k and v get none)
    b_video = [k for k in flat if "video_block/" in k and "cross" not in k and "_lora_b" in k]
    assert len(b_video) == 6 and all(np.abs(flat[k]).max() > 0 for k in b_video)
    assert set(flat) == set(_flat(trained))  # gradients of the trained leaves only

    c.lora.base_dtype = "bfloat16"  # the frozen base stored in half the bytes
    plan = plan_train_step(c, inputs="latents", devices=jax.devices()[:1], flops=0.0)
    assert plan.params == 4 * lora.count(trained)  # float32
    assert plan.frozen_base == 2 * lora.count(frozen) and plan.opt_state >= 2 * plan.params
    assert "frozen base (LoRA)" in format_plan(plan)


def test_a_run_saved_before_the_lora_keys_existed_still_resumes(base_run, tmp_path):
    """A checkpoint's config without `lora` / `init.base_from` reads as their defaults."""
    copy = tmp_path / "old"
    shutil.copytree(base_run, copy)
    file = copy / "checkpoints" / "2" / "config" / "metadata"
    saved = json.loads(file.read_text())
    del saved["lora"], saved["init"]["base_from"]
    file.write_text(json.dumps(saved))
    checkpointer = Checkpointer(str(copy))
    checkpointer.check_resumable(2, tiny.get_config())  # no mismatch raised
    changed = tiny.get_config()
    changed.lora.rank = 4
    with pytest.raises(CheckpointMismatchError, match=r"lora\.rank"):
        checkpointer.check_resumable(2, changed)
    checkpointer.close()


def test_merge_lora_command_refuses_a_plain_run_in_one_line(base_run, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "harmony_jax.convert", "merge-lora", "--workdir", str(base_run)]
        + ["--dst", str(tmp_path / "out")],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    assert done.stderr.strip().splitlines() == [
        f"error: --workdir {base_run} is no LoRA run (config.lora.rank=0): its weights are plain"
    ]


def test_full_fine_tune_starts_from_another_runs_weights(base_run, tmp_path):
    """`init.params_from`: a full run's step 1 (zero learning rate) holds the base's weights,
    all of them trained (no frozen part); beside LoRA, imports or a missing run it is refused
    naming the key."""
    c = tiny.get_config()
    c.total_steps = c.checkpoint_every = 1
    c.init.params_from = str(base_run)
    state = train(c, str(tmp_path / "full"))
    _, base = load_for_inference(str(base_run), dtype="float32")
    assert state.frozen is None
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state.params)[0],
                            jax.tree.leaves(base)):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    for key, value, words in (
        ("lora.rank", 4, r"init\.params_from.*init\.base_from"),
        ("init.video_from", "/tower", r"init\.video_from.*brings every weight"),
    ):
        bad = tiny.get_config()
        bad.init.params_from = str(base_run)
        section, name = key.split(".")
        bad[section][name] = value
        with pytest.raises(ConfigError, match=words):
            check_config(bad)
    c.init.params_from = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"init\.params_from=.*nowhere is missing"):
        train(c, str(tmp_path / "other"))


def test_teaching_a_new_colour_sets_lora_beside_full_fine_tuning(base_run, tmp_path):
    """bench/demo_lora's comparison at the tiniest size: both fine-tunes train on the world
    with white added, LoRA trains fewer parameters than the full model has, the shares of the
    ground truth are 1 and every model's row is in the table."""
    from harmony_jax.eval import finetune

    lines = []
    out = finetune.compare(
        str(base_run), str(tmp_path), "white", steps=2, rank=2, num_clips=2, colour_clips=2,
        timing_steps=1, sample_steps=2, modes=("t2av",), echo=lines.append,
    )  # fmt: skip
    (lora_count, lora_speed), (full_count, full_speed) = (
        out["timing"][name] for name in ("LoRA", "full")
    )
    _, base = load_for_inference(str(base_run), dtype="float32")
    assert full_count == lora.count(base) > lora_count > 0 and lora_speed > 0 and full_speed > 0
    shares = out["results"]["base"]["shares"]
    assert shares["truth colour"] == 1.0 and shares["truth pitch"] > 0.99
    for name in ("base", "LoRA", "full"):
        result = out["results"][name]
        assert 0 <= result["shares"]["colour"] <= 1 and 0 <= result["shares"]["pitch"] <= 1
        assert list(result["f1"]) == ["t2av"] and len(result["f1"]["t2av"]) == 2
    text = lines[0]
    for row in ("ground truth", "base (before)", "LoRA rank 2", "full fine-tune", "95% CI"):
        assert row in text
    assert (tmp_path / "demo_lora_sheet.png").stat().st_size > 0
    saved = json.loads((tmp_path / "demo_lora.json").read_text())
    assert saved["tables"] == out["tables"]
    config = json.loads((tmp_path / "LoRA" / "config.json").read_text())
    assert config["data"]["colors"][-1] == "white" and config["lora"]["train_also"] == "^text/"
    with pytest.raises(ConfigError, match="already trained on it"):
        finetune.fine_tune_configs(tiny.get_config(), "base", "red", 2, 2)


def test_a_lora_run_can_be_the_base_of_another(lora_run, tmp_path):
    """Adapters over a LoRA run: its base is that run merged; at step 1 (zero learning rate,
    B = 0) the new run's merged weights are the old run's bit for bit."""
    workdir, _ = lora_run
    train(_lora_config(str(workdir), total_steps=1), str(tmp_path))
    _, nested = load_for_inference(tmp_path, dtype="float32")
    _, below = load_for_inference(workdir, dtype="float32")
    for (path, a), b in zip(_flat(nested).items(), _flat(below).values()):
        np.testing.assert_array_equal(a, b, err_msg=path)
