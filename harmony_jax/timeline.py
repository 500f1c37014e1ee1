"""Time on the one axis both towers share: seconds from a clip's start.

A latent frame's time is the instant its content stands for: a video frame's capture
(= presentation) time, i / fps; an analysis window's centre for framed audio,
(i + 0.5) / latent_rate (`interval_centres`). Codecs, model inputs and tests all read it here, so
nothing above the codecs has to import one to know where a frame sits in time.
"""

from __future__ import annotations

import numpy as np


def interval_centres(num_latent_frames: int, latent_rate: float) -> np.ndarray:
    """Seconds at the centre of latent frames that tile time at `latent_rate` from t = 0."""
    return (np.arange(num_latent_frames, dtype=np.float64) + 0.5) / latent_rate  # [T]
