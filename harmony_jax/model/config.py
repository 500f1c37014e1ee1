"""Frozen, typed model configuration: built once from `config.model`, the only thing layers see."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from harmony_jax.model.attention import IMPLEMENTATIONS as _ATTENTION
from harmony_jax.model.position import POS_EMBEDS
from harmony_jax.model.splash import SplashBlocks

INTERACTIONS = ("gldi", "global")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")  # model/dit.py's policies


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    dim: int
    heads: int
    ffn_dim: int
    in_channels: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclasses.dataclass(frozen=True)
class VideoTowerConfig(TowerConfig):
    patch: tuple[int, int, int] = (1, 2, 2)
    # 0: padded caption tokens are masked out of the text cross-attention. N > 0: Wan2.2's
    # padding (N = 512): the caption's real-token states are zero-padded to N tokens and all N
    # are attended, unmasked, so an imported Wan tower computes what upstream computes.
    text_pad_to: int = 0
    pos_embed: str = "none"  # absolute position of the tokens, one of model/position.py's kinds
    # base of the 3D RoPE frequencies (Wan: 10000, sized for grids of ~50 patches; a grid of
    # 4 patches a side is resolved by one band of five at that base)
    rope_theta: float = 10000.0


@dataclasses.dataclass(frozen=True)
class TranscriptConfig:
    vocab_size: int
    dim: int
    conv_layers: int
    conv_mult: int
    max_len: int


@dataclasses.dataclass(frozen=True)
class InteractionConfig:
    mode: str = "gldi"  # 'gldi' (band-masked local + global style) | 'global' (Ovi-like baseline)
    window: float = 2.0  # band half-width, in video latent frames
    rope_align: bool = True  # RoPE positions in common time units (False: raw token indices)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    depth: int
    text_dim: int
    freq_dim: int
    eps: float
    video: VideoTowerConfig
    audio: TowerConfig
    transcript: TranscriptConfig
    interaction: InteractionConfig
    video_latent_rate: float  # latent frames per second: the common time unit of both branches
    attention: str = "xla"
    splash: SplashBlocks = SplashBlocks()  # tile sizes of the 'splash' kernel
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = True
    remat: str = "none"

    def __post_init__(self):
        _check("model.interaction.mode", self.interaction.mode, INTERACTIONS)
        _check("model.remat", self.remat, REMAT_POLICIES)
        _check("model.attention", self.attention, _ATTENTION)
        _check("model.video.pos_embed", self.video.pos_embed, POS_EMBEDS)
        if not self.video.rope_theta > 1.0:
            raise ValueError(f"model.video.rope_theta={self.video.rope_theta} must be > 1")
        if self.video.text_pad_to < 0:
            raise ValueError(
                f"model.video.text_pad_to={self.video.text_pad_to} must be >= 0 "
                f"(0: mask padded caption tokens)"
            )
        for name, tower in (("video", self.video), ("audio", self.audio)):
            if tower.dim % tower.heads:
                raise ValueError(
                    f"model.{name}.dim={tower.dim} is not divisible by "
                    f"model.{name}.heads={tower.heads}"
                )

    @classmethod
    def from_config(cls, model_cfg, *, video_latent_rate: float) -> ModelConfig:
        """Builds the frozen config from the `config.model` ConfigDict.

        `video_latent_rate` comes from the video codec (fps / temporal stride), so the model never
        hard-codes a frame rate.
        """
        m = model_cfg
        return cls(
            depth=int(m.depth),
            text_dim=int(m.text_dim),
            freq_dim=int(m.freq_dim),
            eps=float(m.eps),
            video=VideoTowerConfig(
                dim=int(m.video.dim),
                heads=int(m.video.heads),
                ffn_dim=int(m.video.ffn_dim),
                in_channels=int(m.video.in_channels),
                patch=tuple(int(p) for p in m.video.patch),
                text_pad_to=int(m.video.text_pad_to),
                pos_embed=str(m.video.pos_embed),
                rope_theta=float(m.video.rope_theta),
            ),
            audio=TowerConfig(
                dim=int(m.audio.dim),
                heads=int(m.audio.heads),
                ffn_dim=int(m.audio.ffn_dim),
                in_channels=int(m.audio.in_channels),
            ),
            transcript=TranscriptConfig(**{k: int(v) for k, v in m.transcript.items()}),
            interaction=InteractionConfig(
                mode=str(m.interaction.mode),
                window=float(m.interaction.window),
                rope_align=bool(m.interaction.rope_align),
            ),
            video_latent_rate=float(video_latent_rate),
            attention=str(m.attention),
            splash=SplashBlocks(
                **{k: type(getattr(SplashBlocks(), k))(v) for k, v in m.splash.items()}
            ),
            dtype=jnp.dtype(m.dtype),
            param_dtype=jnp.dtype(m.param_dtype),
            scan_layers=bool(m.scan_layers),
            remat=str(m.remat),
        )


def _check(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"config {key}={value!r} is not one of {valid}")
