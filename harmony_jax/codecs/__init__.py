"""Latent codecs and text encoders behind one interface (DESIGN.md section 3).

Build them from the run config with `make_video_codec`, `make_audio_codec`, `make_text_encoder`;
each picks the implementation named by `config.codecs.<kind>.name`. Implementations are imported
lazily so a run only loads what it uses (a VAE checkpoint reader, librosa, a tokenizer).
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from harmony_jax.codecs.base import AudioCodec, TextEncoder, VideoCodec

__all__ = [
    "AudioCodec",
    "TextEncoder",
    "VideoCodec",
    "make_audio_codec",
    "make_text_encoder",
    "make_video_codec",
]


def _pixel(config: ml_collections.ConfigDict) -> VideoCodec:
    from harmony_jax.codecs.pixel import PixelCodec

    return PixelCodec(fps=float(config.data.fps))


def _mel(config: ml_collections.ConfigDict) -> AudioCodec:
    from harmony_jax.codecs.mel import MelCodec

    a = config.codecs.audio
    return MelCodec(
        sample_rate=int(config.data.sample_rate),
        n_mels=a.n_mels,
        n_fft=a.n_fft,
        hop_length=a.hop_length,
        griffin_lim_iters=a.griffin_lim_iters,
    )


def _mmaudio(config: ml_collections.ConfigDict) -> AudioCodec:
    from harmony_jax.codecs.mmaudio import MMAudioCodec, variant_of

    a, variant = config.codecs.audio, variant_of(config)
    if int(config.data.sample_rate) != variant.sample_rate:
        raise ValueError(
            f"config.codecs.audio.variant={a.variant!r} works at "
            f"{variant.sample_rate} Hz, config.data.sample_rate is "
            f"{config.data.sample_rate}"
        )
    return MMAudioCodec(path=a.path, vocoder_path=a.vocoder_path, variant=variant)


def _demo_text(config: ml_collections.ConfigDict) -> TextEncoder:
    from harmony_jax.codecs.text import DemoTextEncoder

    t = config.codecs.text
    return DemoTextEncoder(vocab_size=t.vocab_size, max_len=t.max_len, dim=config.model.text_dim)


def _wan22(config: ml_collections.ConfigDict) -> VideoCodec:
    from harmony_jax.codecs.wan22 import WanVAECodec

    return WanVAECodec(path=config.codecs.video.path, fps=float(config.data.fps))


def _umt5(config: ml_collections.ConfigDict) -> TextEncoder:
    from harmony_jax.codecs.umt5_text import UMT5TextEncoder

    return UMT5TextEncoder(path=config.codecs.text.path, max_len=int(config.codecs.text.max_len))


_VIDEO: dict[str, Callable] = {"pixel": _pixel, "wan2.2": _wan22}
_AUDIO: dict[str, Callable] = {"mel": _mel, "mmaudio": _mmaudio}
_TEXT: dict[str, Callable] = {"demo": _demo_text, "umt5": _umt5}
NAMES = {
    "video": tuple(_VIDEO),
    "audio": tuple(_AUDIO),  # config.codecs.<kind>.name
    "text": tuple(_TEXT),
}


def _make(registry: dict[str, Callable], kind: str, config: ml_collections.ConfigDict):
    name = config.codecs[kind].name
    if name not in registry:
        raise ValueError(f"Unknown config.codecs.{kind}.name={name!r}; valid: {sorted(registry)}")
    return registry[name](config)


def make_video_codec(config: ml_collections.ConfigDict) -> VideoCodec:
    """The video codec named by `config.codecs.video.name`."""
    return _make(_VIDEO, "video", config)


def make_audio_codec(config: ml_collections.ConfigDict) -> AudioCodec:
    """The audio codec named by `config.codecs.audio.name`."""
    return _make(_AUDIO, "audio", config)


def make_text_encoder(config: ml_collections.ConfigDict) -> TextEncoder:
    """The text encoder named by `config.codecs.text.name`."""
    return _make(_TEXT, "text", config)
