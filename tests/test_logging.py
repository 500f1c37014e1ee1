"""What a run prints: library INFO records filtered (and shown again with --verbosity), the
training progress as a bar on a terminal and as plain lines elsewhere."""

import io
import logging as std_logging

import pytest
from absl import logging

from harmony_jax import quiet_logs
from harmony_jax.training.progress import Progress


def _record(name: str, path: str, level: int = std_logging.INFO) -> std_logging.LogRecord:
    return std_logging.LogRecord(name, level, path, 1, "message", None, None)


@pytest.fixture
def verbosity():
    before = logging.get_verbosity()
    yield logging.set_verbosity
    logging.set_verbosity(before)


_ORBAX = "/venv/lib/python3.12/site-packages/orbax/checkpoint/_src/checkpointer.py"
_ETILS = "/venv/lib/python3.12/site-packages/etils/epath/gpath.py"
_OURS = "/work/harmony_jax/training/loop.py"


def test_library_info_dropped_ours_and_warnings_kept(verbosity):
    verbosity(logging.INFO)
    keep = quiet_logs.NoisyLogFilter().filter
    assert not keep(_record("absl", _ORBAX))  # orbax logs under absl's logger: known by its file
    assert not keep(_record("etils.epath", _ETILS))
    assert not keep(_record("orbax.checkpoint", "x.py"))
    assert keep(_record("absl", _OURS))
    assert keep(_record("absl", _ORBAX, std_logging.WARNING))


def test_verbosity_shows_library_info_again(verbosity):
    verbosity(logging.DEBUG)  # --verbosity=1
    assert quiet_logs.NoisyLogFilter().filter(_record("absl", _ORBAX))


def test_install_adds_one_filter_on_absl_handler():
    quiet_logs.install()
    quiet_logs.install()
    filters = logging.get_absl_handler().filters
    assert sum(isinstance(f, quiet_logs.NoisyLogFilter) for f in filters) == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_bar_with_rate_and_eta_and_metric_lines():
    out = _Terminal()
    progress = Progress(start=2, total=6, stream=out)
    for step in (3, 4):
        progress.step()
        progress.log(step, {"loss": 0.5})
    progress.close()
    text = out.getvalue()
    assert "step/s" in text and "4/6" in text and "<" in text  # rate, count, elapsed<remaining
    assert "step 4 loss=0.5000" in text
    assert text.count("measured ") == 1 and "remaining 3 steps" in text


def test_pipe_gets_plain_lines_with_rate_and_eta(monkeypatch):
    lines = []
    monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
    out = io.StringIO()
    progress = Progress(start=0, total=4, stream=out)
    progress.step()
    progress.step()
    progress.log(2, {"loss": 1.0})
    progress.close()
    assert out.getvalue() == ""  # no bar when not a terminal
    assert len(lines) == 2 and lines[1].startswith("step 2 loss=1.0000 | ")
    assert "steps/s | ETA " in lines[1]
    # before the first metrics, once: the measured rate and how long the rest takes
    assert lines[0].startswith("measured ") and "the remaining 2 steps take about " in lines[0]
