"""SyncCFG sampling cost and our video tower against diffusers' Wan transformer.

    python bench/sampler.py [--config configs/harmony_5b.py] [--quick] [--steps 40] [--runs 3] \
        [--attention auto,blockwise,splash] [--mesh fsdp=8] [--nopeer] [--config.batch_size=1 ...]

First table: one joint forward pass, the 3B-row call SyncCFG makes per step, one SyncCFG step
inside the jitted 40-step sampler and the whole clip, each also as a multiple of the joint
forward (3.0 is the floor where the device is busy at B rows). Second table: diffusers'
WanTransformer3DModel (PyTorch) against our video tower on the same shapes and weights (the
Wan2.2-TI2V-5B tower at 480p; `--quick`: a 2-layer tower on 320 tokens), ours / theirs.
`--quick` is for a CPU: a tiny model, float32 on both sides of the comparison. `--attention`:
the kernels measured side by side (default: the config's, with blockwise and splash beside it on
a TPU or with `--quick`; off TPU splash runs interpreted, and its rows say so).

Layout table: the sampler as `sample --mesh --dtype --quantize` loads it, per-step time and
bytes per device against one device in float32: bfloat16, int8 kernels, and `--mesh` (default
fsdp=8; on a CPU that many devices are simulated, sharing its cores) in float32 and with int8
kernels. `--mesh ''` leaves the mesh rows out.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave PyTorch its share

import jax
from absl import app, flags
from ml_collections import config_flags

from harmony_jax.perf import peer, sampler, sampler_layouts

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "configs", "harmony_5b.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "The model and clip geometry.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny models for a CPU instead of --config.")
_STEPS = flags.DEFINE_integer("steps", 40, "Sampler steps per clip.")
_RUNS = flags.DEFINE_integer("runs", 3, "Timed calls per measurement (median; after 1 warmup).")
_MESH = flags.DEFINE_string(
    "mesh", "fsdp=8", "Mesh of the layout table's mesh rows ('' for none), as sample's --mesh."
)
_PEER = flags.DEFINE_bool("peer", True, "Also time diffusers' Wan transformer (needs torch).")
_ATTENTION = flags.DEFINE_list(
    "attention",
    None,
    "model.attention kernels, side by side; "
    "default: the config's (+ blockwise, splash on TPU or --quick).",
)


def main(argv):
    del argv
    layouts = sampler_layouts.default_layouts(_MESH.value)
    needed = max(sampler_layouts.devices_needed(layout) for layout in layouts)
    jax.config.update("jax_num_cpu_devices", needed)  # before JAX starts; CPU backend only
    config = sampler.quick_sampler_config() if _QUICK.value else _CONFIG.value
    attentions = _ATTENTION.value or sampler.default_attentions(config, _QUICK.value)
    times = sampler.measure_attentions(config, attentions, steps=_STEPS.value, runs=_RUNS.value)
    print(f"SyncCFG t2av, {config.batch_size} clip(s) per call, {_STEPS.value} Euler steps")
    print(sampler.sampler_table(times))
    if needed > jax.device_count():
        print(f"\n({_MESH.value} needs {needed} devices, {jax.device_count()} here: no mesh rows)")
        layouts = [layout for layout in layouts if not layout.mesh]
    rows = sampler_layouts.measure_layouts(config, layouts, steps=_STEPS.value, runs=_RUNS.value)
    print(f"\nlayouts ({jax.devices()[0].device_kind}), against one device in float32")
    print(sampler_layouts.layout_table(rows))
    if _PEER.value:
        shape = peer.QUICK if _QUICK.value else peer.WAN22_5B_480P
        print(f"\nvideo tower forward: {shape}")
        print(peer.peer_table(peer.measure_peer(shape, runs=_RUNS.value)))


if __name__ == "__main__":
    app.run(main)
