"""`--config.key=value` overrides: a typo names the closest key, a value of the wrong type names
the key, the expected type and the value; anything the check lets through parses in
ml_collections as it is; the entry points print one line, not a traceback."""

import os
import re
import subprocess
import sys

import pytest
from absl import flags
from hypothesis import given, settings
from hypothesis import strategies as st
from ml_collections import config_flags

from harmony_jax.config_cli import (
    ConfigOverrideError,
    check_argv,
    check_override,
    flat_config,
    load_config_file,
    parse_flags,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
CONFIG = load_config_file(TINY)
KEYS = sorted(flat_config(CONFIG))


@pytest.mark.parametrize(
    "key, message",
    [
        ("optim.lrr", "--config.optim.lrr: no such config key; did you mean --config.optim.lr?"),
        ("total_step", "did you mean --config.total_steps?"),
        ("lrr", "did you mean --config.optim.lr?"),  # by the last part of the key
        ("model.depht", "did you mean --config.model.depth?"),
        ("zzzzzz", "--config.zzzzzz: no such config key (every key"),
    ],
)
def test_unknown_key_suggests_the_closest(key, message):
    with pytest.raises(ConfigOverrideError, match=re.escape(message)):
        check_override(CONFIG, key, "1")


@pytest.mark.parametrize(
    "key, raw, expected",
    [
        ("total_steps", "abc", "an integer"),
        ("total_steps", "1.5", "an integer"),
        ("total_steps", '"10"', "an integer"),  # a quoted string where a number is expected
        ("optim.lr", "fast", "a number"),
        ("model.scan_layers", "maybe", "true or false"),
        ("cts.fractions", "abc", "a tuple of numbers"),
        ("cts.fractions", "(0.5, 'x', 0.2)", "a tuple of numbers"),
        ("axis_rules", "abc", "a tuple"),
    ],
)
def test_wrong_type_names_key_type_and_value(key, raw, expected):
    with pytest.raises(
        ConfigOverrideError,
        match=f"--config.{key}=.*: expected {expected} "
        r"\(default .*\), got ",
    ):
        check_override(CONFIG, key, raw)


@pytest.mark.parametrize(
    "key, raw",
    [
        ("total_steps", "12"),
        ("optim.lr", "3e-4"),
        ("optim.lr", "1"),
        ("model.scan_layers", "false"),
        ("cts.fractions", "(1, 0, 0)"),
        ("cts.fractions", "0.5"),
        ("model.interaction.mode", "global"),
        ("data.root", "/some/where"),
        ("model.remat", None),
    ],
)
def test_good_values_pass(key, raw):
    check_override(CONFIG, key, raw)


def test_a_section_is_not_a_value():
    with pytest.raises(ConfigOverrideError, match="--config.optim is a section"):
        check_override(CONFIG, "optim", "3")


def test_argv_forms_as_absl_reads_them():
    """`=value`, `value` as the next argument, bare and negated booleans."""
    prog = ["train.py", f"--config={TINY}"]
    check_argv(
        prog
        + [
            "--config.total_steps",
            "7",
            "--config.model.scan_layers",
            "--noconfig.model.scan_layers",
            "positional",
        ]
    )
    with pytest.raises(ConfigOverrideError, match="--config.total_steps=x: expected"):
        check_argv(["train.py", "--config", TINY, "--config.total_steps", "x"])
    with pytest.raises(ConfigOverrideError, match="did you mean --config.optim.lr"):
        check_argv(prog + ["-config.optim.lrr=1"])
    check_argv(["train.py", "--config.optim.lrr=1"])  # no config file: absl reports that


def test_parse_flags_exits_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_flags(["train.py", f"--config={TINY}", "--config.optim.lrr=1"])
    assert exit_info.value.code == 2  # a user error (errors.USER_EXIT)
    assert re.match(
        r"^error: --config.optim.lrr: no such config key; did you mean "
        r"--config.optim.lr\?",
        capsys.readouterr().err,
    )


def _absl_parse(key, raw):
    """What ml_collections makes of the override, on flags of its own."""
    argv = ["train.py", f"--config={TINY}", f"--config.{key}={raw}"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


_KEYS = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS).flatmap(
        lambda k: st.integers(0, len(k) - 1).map(lambda i: k[:i] + k[i + 1 :])
    ),  # one character dropped: a typo
    st.text("abcdefghijklmnopqrstuvwxyz_.0123456789", min_size=1, max_size=20),
)
_VALUES = st.one_of(
    st.sampled_from(
        [
            "1",
            "-3",
            "0.5",
            "1e-4",
            "true",
            "false",
            "abc",
            '"10"',
            "(1, 2, 2)",
            "(0.5, 'x')",
            "[1, 2]",
            "{'a': 1}",
            "None",
            "",
            "nan",
            "0x10",
            "1_000",
        ]
    ),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
)


@settings(max_examples=50, deadline=None)
@given(key=_KEYS, raw=_VALUES)
def test_fuzzed_override_is_a_clean_error_or_parses(key, raw):
    """Random keys and values: either ConfigOverrideError naming the key, or ml_collections
    parses the override without error (no traceback from inside the library)."""
    try:
        check_override(CONFIG, key, raw)
    except ConfigOverrideError as e:
        assert str(e).startswith(f"--config.{key}"), str(e)
        return
    parsed = _absl_parse(key, raw)
    value, default = flat_config(parsed)[key], flat_config(CONFIG)[key]
    assert type(value) is type(default) or isinstance(default, float) and type(value) is int


@pytest.mark.parametrize(
    "argv",
    [["harmony_jax.train", "--workdir", "unused"], ["harmony_jax.plan"]],
    ids=lambda argv: argv[0],
)
def test_entry_points_print_one_line(argv):
    done = subprocess.run(
        [sys.executable, "-m", *argv, "--config", "configs/tiny.py", "--config.optim.lrr=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2  # a user error (errors.USER_EXIT)
    assert done.stderr.strip().splitlines() == [
        "error: --config.optim.lrr: no such config key; did you mean --config.optim.lr? "
        "(every key and its meaning: harmony_jax/defaults.py)"
    ]
