"""LoRA against full fine-tuning of a trained sounding-shapes model onto a colour it never saw.

    python bench/demo_lora.py --base runs/demo [--workdir runs/demo_lora] [--color white] \
        [--steps 600] [--rank 8] [--num_clips 32] [--colour_clips 16]

Both fine-tunes start from the base's weights and train the same steps on the base's world
with `--color` added to its palette (`data.colors`; about one clip in five holds it), the
base's optimizer and seed: LoRA (`lora.rank`, `init.base_from`, the DiT's default
targets plus the demo text embedder in full, `lora.train_also=^text/`, so the new word gets an
embedding) and full fine-tuning (`init.params_from`). One table then sets base, LoRA and full
side by side: trained parameters, training steps/s (each step timed in turn, one run), the new
colour's share of bright pixels and its pitch's share of tone energy in T2AV samples captioned
with it alone (the ground truth's beside them), and the held-out event F1 of the base's own
world in every mode; a second table gives each fine-tune's change of that F1 with its paired
bootstrap 95% CI (the old colours' sync must not move beyond noise). Runs already trained in
the workdir are reused; the table is also written to `WORKDIR/demo_lora.json`, and the T2AV
samples naming the colour, per model above the ground truth, to `WORKDIR/demo_lora_sheet.png`.
"""

from __future__ import annotations

from absl import app, flags

from harmony_jax.data.sounding_shapes import PALETTE
from harmony_jax.errors import reported_as_one_line
from harmony_jax.eval.finetune import compare

_BASE = flags.DEFINE_string("base", "runs/demo", "A trained sounding-shapes run (its workdir).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo_lora", "Where the two fine-tunes train.")
_COLOR = flags.DEFINE_enum("color", "white", list(PALETTE), "The colour the base never saw.")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps of each fine-tune.")
_RANK = flags.DEFINE_integer("rank", 8, "LoRA rank.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 32, "Held-out prompts of the old world per mode.")
_COLOUR_CLIPS = flags.DEFINE_integer("colour_clips", 16, "T2AV samples naming the new colour.")
_TIMING_STEPS = flags.DEFINE_integer("timing_steps", 20, "Timed train steps of each.")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 0, "Sampler steps (0: the run's).")


@reported_as_one_line  # a missing base, a colour it knows: one line, no traceback
def main(argv):
    del argv
    compare(
        _BASE.value,
        _WORKDIR.value,
        _COLOR.value,
        steps=_STEPS.value,
        rank=_RANK.value,
        num_clips=_NUM_CLIPS.value,
        colour_clips=_COLOUR_CLIPS.value,
        timing_steps=_TIMING_STEPS.value,
        sample_steps=_SAMPLE_STEPS.value,
        echo=print,
    )


if __name__ == "__main__":
    app.run(main)
