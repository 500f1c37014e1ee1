"""Why a demo model does or does not learn its world: four measurements of a trained run.

    python bench/demo_diagnostics.py --workdir runs/demo [--num_clips 8]

1. position: a spatially constant input at sigma 0.95 (the background colour everywhere, the
   same noise in every patch of every frame); the std across patch positions of the predicted
   x0. A tower without absolute position gives 0 (it is translation-equivariant); real clips
   differ by ~0.2.
2. per sigma: the x0 error of the model against that of the optimal denoiser of the run's
   first `num_clips` training clips (the posterior mean over those clips whose caption is the
   prompt). For a run trained on exactly those clips (`--config.data.num_clips=8`), the gap is
   how far from memorising it is; for a run on the full world the optimum is a lower bound.
3. text path: predicted x0 at sigma 0.9 under the clip's caption and under the same caption
   with its colours swapped for others; the share of coloured mass the prediction puts on the
   captioned colours (1.0: the caption decides the colour; 1/6: it is ignored).
4. rotary bands: per spatial axis, how many of the video heads' RoPE frequencies turn by at
   least an eighth of a turn across the axis (the rest are near constant at this grid size).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from harmony_jax import generation
from harmony_jax.data.sounding_shapes import SoundingShapes
from harmony_jax.eval.diagnostics import per_sigma, position_std, rotary_bands, text_path
from harmony_jax.inference import load_for_inference

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "A trained sounding-shapes run.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 8, "Training clips measured (from index 0).")


def main(argv):
    del argv
    system, params = load_for_inference(_WORKDIR.value, dtype="float32")
    d, n = system.clip, _NUM_CLIPS.value
    world = SoundingShapes.like(d, n, system.sampler.seed)
    clips = [world[i] for i in range(n)]
    captions = [c["video_caption"] for c in clips]
    batch = generation.prompt_batch(system, captions, [c["audio_caption"] for c in clips])
    media = {
        "video": jnp.asarray(np.stack([c["video"] for c in clips])),
        "audio": jnp.asarray(np.stack([c["audio"] for c in clips])),
    }
    video, audio = system.encode_media(media)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    model_std, real_std = position_std(system, params, batch | media, audio)
    print(f"1. position: x0 std across patch positions, constant input {model_std:.2e}")
    print(f"   (real clips {real_std:.3f}; 0 = translation-equivariant)")
    print("\n2. x0 MSE per sigma, model vs the optimal denoiser of these clips")
    print(f"{'sigma':>6} {'model':>9} {'optimal':>9}")
    for sigma, model, best in per_sigma(system, params, batch, video, audio, captions):
        print(f"{sigma:>6.2f} {model:>9.4f} {best:>9.4f}")
    own, swapped = text_path(system, params, world, n, video, audio)
    print(
        f"\n3. text path: captioned colours' share of the x0 colour mass at sigma 0.9: "
        f"{own:.2f} with the caption, {swapped:.2f} with its colours swapped (chance ~"
        f"{1 / len(world.colors):.2f})"
    )
    mc = system.model_config.video
    grid = (video.shape[2] // mc.patch[1], video.shape[3] // mc.patch[2])
    bands = rotary_bands(mc.dim // mc.heads, grid, mc.rope_theta)
    print(
        f"\n4. rotary bands resolving position over the {grid[0]}x{grid[1]} patch grid "
        f"(base {mc.rope_theta:g}): "
        f"height {bands[0][0]} of {bands[0][1]}, width {bands[1][0]} of {bands[1][1]}"
    )


if __name__ == "__main__":
    app.run(main)
