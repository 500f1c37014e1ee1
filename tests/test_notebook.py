"""The Colab notebook runs top to bottom on CPU: tiny config, one training step."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "launch", "colab_inference.ipynb")


def _with_parameters(nb, **values):
    """Papermill's convention: a cell after the one tagged 'parameters' overrides it."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


@pytest.mark.slow
def test_notebook_runs_on_cpu(tmp_path, monkeypatch):
    # One CPU device in the kernel (the tiny config's batch does not split over 8) and the
    # tests' compile cache.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    out = tmp_path / "samples"
    nb = _with_parameters(
        nbformat.read(NOTEBOOK, as_version=4),
        CONFIG="configs/tiny.py",
        WORKDIR=str(tmp_path / "run"),
        TRAIN_STEPS=1,
        OUT=str(out),
    )
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}},
    ).execute()

    for name in ("t2av", "a2v", "v2a"):
        assert (out / f"{name}.mp4").exists() and (out / f"{name}.wav").exists()
    assert (out / "sync.png").exists()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert sum("<video" in h and "base64" in h for h in html) == 4  # given + three modes
    assert sum("<audio" in h for h in html) == 4
    assert any("image/png" in o.get("data", {}) for o in outputs)
    printed = "".join(o.get("text", "") for o in outputs)
    assert "runtime: 1 CPU device" in printed  # the layout chosen for what it found, said
    assert "sampling with --mesh fsdp=1 --dtype float32 --quantize none" in printed
    assert any(
        re.search(r"mean \((4|\d of 4: \d without evidence excluded)\)", o.get("text", ""))
        for o in outputs
    )  # the folder table's mean row
