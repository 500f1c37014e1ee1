"""The train-step benchmark's default (`bench/train_step.py`): harmony_5b's widths at depth 4
(1.95B parameters with the audio tower and interaction), Wan2.2's 480p clip (81 frames at
480x832: 8,190 video tokens after the 1x2x2 patch) with 3.4 s of audio and a 2 s reference voice,
batch 2: one GPU's worth of work at a realistic token count. On N GPUs pass
`--config.batch_size=2N` (the mesh is fsdp over every device).
"""

import os

from harmony_jax.config_cli import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "harmony_5b.py"))
    c.model.depth = 4
    c.data.update(num_frames=81, height=480, width=832)
    c.batch_size = 2
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return c
