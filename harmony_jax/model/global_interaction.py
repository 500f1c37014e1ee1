"""The Ovi-like baseline of the interaction ablation (`model.interaction.mode='global'`): A2V and
V2A cross-attention over the whole clip, no temporal band and no reference-audio path. Same
parameters as GLDI's local pair ('a2v', 'v2a'), so the two modes differ in the mechanism alone."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from harmony_jax.model.config import ModelConfig
from harmony_jax.model.interaction import CrossModalGeometry, cross_attend


class GlobalInteraction(nn.Module):
    config: ModelConfig
    num_ref: int  # reference-audio tokens at the front of the audio sequence, passed through

    @nn.compact
    def __call__(self, x_v: jax.Array, x_a: jax.Array, geo: CrossModalGeometry):
        # x_v [B, Lv, Dv]; x_a [B, Tr + Ta, Da]; geo's masks are None under this mode
        ref, audio = x_a[:, : self.num_ref], x_a[:, self.num_ref :]
        new_v, new_a = cross_attend(self.config, x_v, audio, geo)
        return new_v, jnp.concatenate([ref, new_a], axis=1)
