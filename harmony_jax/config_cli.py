"""`--config.key=value` overrides checked before absl and ml_collections parse them.

ml_collections reports an unknown key as a traceback from inside its parser and silently accepts
some values of the wrong type (a word for a tuple of numbers); here either is one line naming the
key: the closest existing key for a typo, the expected type and the given value otherwise. The
entry points that take `--config` pass `parse_flags` to `app.run`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from harmony_jax.errors import USER_EXIT, ConfigError


class ConfigOverrideError(ConfigError):
    """A `--config.key=value` names no config key, or gives a value of the wrong type."""


def flat_config(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value, for every leaf and every section (a section maps to its ConfigDict)."""
    flat = {}
    for key, value in config.items():
        flat[prefix + key] = value
        if isinstance(value, ml_collections.ConfigDict):
            flat.update(flat_config(value, f"{prefix}{key}."))
    return flat


def _suggestion(key: str, keys: Sequence[str]) -> str:
    """The closest key, by the whole dotted key, else by its last part (`lrr` -> `optim.lr`)."""
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.7)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        names = difflib.get_close_matches(
            leaf, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.7
        )
        close = [k for k in keys if names and k.rsplit(".", 1)[-1] == names[0]]
    return close[0] if close else ""


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return raw  # a bare word: what ml_collections makes of it too


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fits(default: Any, raw: str) -> bool:
    """Would ml_collections turn `raw` into a value of `default`'s type, and a sensible one?"""
    parsers = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser()}
    if type(default) in parsers:
        try:
            parsers[type(default)].parse(raw)
        except ValueError:
            return False
        return True
    if isinstance(default, tuple):  # '(1, 2, 2)', or one number per repeated flag
        value = _literal(raw)
        if default and all(_is_number(x) for x in default):
            return all(
                _is_number(x) for x in (value if isinstance(value, (tuple, list)) else (value,))
            )
        return isinstance(value, (tuple, list))
    return True  # strings take any text


def _type_name(default: Any) -> str:
    if isinstance(default, tuple) and default and all(_is_number(x) for x in default):
        return "a tuple of numbers"
    return {bool: "true or false", int: "an integer", float: "a number", tuple: "a tuple"}.get(
        type(default), type(default).__name__
    )


def check_override(
    config: ml_collections.ConfigDict, key: str, raw: str | None, name: str = "config"
) -> None:
    """Raises ConfigOverrideError naming `--name.key` if the key or the value cannot be right.

    `raw` is the text after '=' (None for a bare boolean flag, `--config.x`)."""
    flat = flat_config(config)
    if key not in flat:
        close = _suggestion(key, list(flat))
        hint = f"; did you mean --{name}.{close}?" if close else ""
        raise ConfigOverrideError(
            f"--{name}.{key}: no such config key{hint} (every key and "
            f"its meaning: harmony_jax/defaults.py)"
        )
    default = flat[key]
    if isinstance(default, ml_collections.ConfigDict):
        raise ConfigOverrideError(
            f"--{name}.{key} is a section; set its keys one by one, e.g. "
            f"--{name}.{key}.{next(iter(default.keys()), 'x')}=..."
        )
    if raw is not None and default is not None and not _fits(default, raw):
        raise ConfigOverrideError(
            f"--{name}.{key}={raw}: expected {_type_name(default)} "
            f"(default {default!r}), got {raw!r}"
        )


def _overrides(
    argv: Sequence[str], config: ml_collections.ConfigDict, name: str
) -> list[tuple[str, str | None]]:
    """(key, raw value) of every `--name.key` in argv (even past `--`, as ml_collections looks
    for them), valued as absl reads flags: `=value`, else the next argument for a non-boolean,
    `--noname.key` for false."""
    flat = flat_config(config)
    found, args = [], list(argv[1:])
    while args:
        arg = args.pop(0)
        if not arg.startswith("-"):
            continue
        flag, eq, raw = arg.lstrip("-").partition("=")
        if flag.startswith(f"no{name}.") and not eq:
            found.append((flag[len(name) + 3 :], "false"))
        elif flag.startswith(f"{name}."):
            key = flag[len(name) + 1 :]
            if not eq and not isinstance(flat.get(key), bool) and args:
                raw, eq = args.pop(0), "="
            found.append((key, raw if eq else None))
    return found


def _config_file(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name=FILE` or `--name FILE`, if given."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            return None
        flag, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and flag == name:
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file, or `get_config(ARG)` for `FILE:ARG`, as config_flags
    loads `--config`."""
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("_config_file", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


class _ParsedOnce(flags.ArgumentParser):
    """A config-file flag's parser that hands back the config `check_argv` already loaded for
    that path, so the config file is executed once per start."""

    def __init__(self, parser: flags.ArgumentParser, path: str, config: ml_collections.ConfigDict):
        self._parser, self._path, self._config = parser, path, config

    def parse(self, argument: str) -> Any:
        return self._config if argument == self._path else self._parser.parse(argument)

    def flag_type(self) -> str:
        return self._parser.flag_type()


def _load_once(path: str, name: str, flag_values: flags.FlagValues) -> ml_collections.ConfigDict:
    """The config `--name=path` names, loaded by the flag's own parser when `name` is a defined
    config-file flag (which then reuses it), else by `load_config_file`."""
    flag = flag_values[name] if name in flag_values else None
    if flag is not None and isinstance(flag.parser, _ParsedOnce):  # a second parse_flags call
        flag.parser = flag.parser._parser
    if flag is None or not isinstance(flag.parser, ConfigFileFlagParser):
        return load_config_file(path)
    config = flag.parser.parse(path)
    flag.parser = _ParsedOnce(flag.parser, path, config)
    return config


def check_argv(
    argv: Sequence[str], name: str = "config", flag_values: flags.FlagValues = flags.FLAGS
) -> None:
    """Checks every `--name.key[=value]` in argv against the config file argv names; the
    config-file flag `name` of `flag_values` then reuses the config loaded for the check.

    Without a readable config file nothing is checked: absl reports that itself."""
    path = _config_file(argv, name)
    if not path or not os.path.isfile(path.split(":", 1)[0]):
        return
    config = _load_once(path, name, flag_values)
    if not isinstance(config, ml_collections.ConfigDict):  # a file that failed to load
        return
    for key, raw in _overrides(argv, config, name):
        check_override(config, key, raw, name)


def parse_flags(argv: list[str]) -> list[str]:
    """`app.run(main, flags_parser=parse_flags)`: a bad override is one line naming the key,
    then absl parses the flags as usual."""
    try:
        check_argv(argv)
    except ConfigOverrideError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(USER_EXIT)
    return app.parse_flags_with_usage(argv)
