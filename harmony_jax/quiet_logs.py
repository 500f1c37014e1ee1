"""Library INFO records (orbax, etils, absl internals) kept out of the default log.

A demo run otherwise prints ~230 orbax/etils INFO lines for 40 lines of training log. The filter
sits on absl's handler, which every standard-logging record reaches through the root logger, and
reads absl's `--verbosity` at each record: `--verbosity=1` (or `-v 1`) shows them again.
"""

import logging as std_logging
import os

from absl import logging

_NOISY_PACKAGES = ("orbax", "etils", "absl")
_NOISY_DIRS = tuple(f"{os.sep}{name}{os.sep}" for name in _NOISY_PACKAGES)


class NoisyLogFilter(std_logging.Filter):
    """Drops INFO and below from the noisy packages unless absl's verbosity is raised above 0."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING or logging.get_verbosity() > logging.INFO:
            return True
        # orbax and etils log through absl (logger "absl"), so their records are known by file
        noisy = (record.name.split(".")[0] in _NOISY_PACKAGES and record.name != "absl") or any(
            part in record.pathname for part in _NOISY_DIRS
        )
        return not noisy


def install() -> None:
    """Called once by every entry point before `app.run`; a second call adds nothing."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, NoisyLogFilter) for f in handler.filters):
        handler.addFilter(NoisyLogFilter())
