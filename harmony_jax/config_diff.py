"""Where two run configs (as JSON trees) differ: for refusals that name the key and both values."""

from __future__ import annotations

from typing import Any

ABSENT = "<absent>"


def first_difference(a: Any, b: Any, prefix: str = "config") -> tuple[str, Any, Any] | None:
    """(dotted key, a's value, b's value) of the first difference in key order, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            found = first_difference(a.get(key, ABSENT), b.get(key, ABSENT), f"{prefix}.{key}")
            if found is not None:
                return found
        return None
    return None if a == b else (prefix, a, b)


def without(tree: dict, keys: tuple[str, ...]) -> dict:
    """A copy of `tree` without the dotted `keys` (absent ones ignored)."""
    tree = {k: (without(v, ()) if isinstance(v, dict) else v) for k, v in tree.items()}
    for key in keys:
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return tree
