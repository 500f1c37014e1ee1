"""Codec interface: pixel identity, log-mel vs librosa, Griffin-Lim pitch, demo text encoder."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from configs import tiny
from harmony_jax.codecs import (
    AudioCodec,
    TextEncoder,
    VideoCodec,
    make_audio_codec,
    make_text_encoder,
    make_video_codec,
)
from harmony_jax.codecs.mel import LOG_MEL_MEAN, LOG_MEL_SCALE, MelCodec
from harmony_jax.codecs.text import END_ID, encode_transcript

SR = 16000


def _tone(freq: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_factories_build_protocol_instances():
    config = tiny.get_config()
    assert isinstance(make_video_codec(config), VideoCodec)
    assert isinstance(make_audio_codec(config), AudioCodec)
    assert isinstance(make_text_encoder(config), TextEncoder)


@pytest.mark.parametrize(
    "kind, make",
    [("video", make_video_codec), ("audio", make_audio_codec), ("text", make_text_encoder)],
)
def test_unknown_name_lists_valid_names(kind, make):
    config = tiny.get_config()
    config.codecs[kind].name = "nope"
    with pytest.raises(ValueError, match=rf"config\.codecs\.{kind}\.name='nope'.*valid: \["):
        make(config)


def test_pixel_codec_is_identity_with_capture_times():
    codec = make_video_codec(tiny.get_config())  # fps 4
    video = jnp.linspace(-1, 1, 2 * 8 * 4 * 6 * 3).reshape(2, 8, 4, 6, 3)
    latents = jax.jit(codec.encode)(video)
    assert latents.shape == (2, *codec.latent_shape(8, 4, 6), codec.latent_channels)
    np.testing.assert_array_equal(codec.decode(latents), np.asarray(video))
    assert codec.latent_rate == 4.0
    np.testing.assert_allclose(codec.frame_times(3), [0.0, 0.25, 0.5])  # frame i at i / fps
    with pytest.raises(ValueError, match=r"\[B, F, H, W, 3\].*\(2, 8, 4, 6\)"):
        codec.encode(video[..., 0])


def test_mel_rate_and_frame_count():
    codec = make_audio_codec(tiny.get_config())
    assert codec.latent_rate == 62.5 and codec.latent_channels == 16
    assert codec.num_latent_frames(2 * SR) == 125
    assert codec.num_latent_frames(2 * SR + 255) == 125
    latents = jax.jit(codec.encode)(jnp.zeros((3, 2 * SR)))
    assert latents.shape == (3, 125, 16)
    np.testing.assert_allclose(codec.frame_times(2), [0.008, 0.024])
    with pytest.raises(ValueError, match="hop_length=256"):
        codec.encode(jnp.zeros((1, 100)))


def test_mel_matches_librosa():
    codec = MelCodec(n_mels=32)
    rng = np.random.default_rng(0)
    wave = (0.3 * _tone(440.0, 1.0) + 0.05 * rng.standard_normal(SR)).astype(np.float32)
    latents = np.asarray(jax.jit(codec.encode)(wave[None]))[0]  # [Ta, n_mels]
    # Same frames as librosa's: centre padding shifted by half a hop (see mel.py).
    pad = (codec.n_fft - codec.hop_length) // 2
    ref = librosa.feature.melspectrogram(
        y=np.pad(wave, pad),
        sr=SR,
        n_fft=codec.n_fft,
        hop_length=codec.hop_length,
        n_mels=codec.n_mels,
        center=False,
    )  # [n_mels, Ta]
    ref_latents = (np.log(np.maximum(ref, 1e-5)).T + 3.0) / 8.0
    assert latents.shape == ref_latents.shape == (62, 32)
    np.testing.assert_allclose(latents, ref_latents, atol=1e-3)


def test_mel_normalisation_is_unit_scale():
    codec = MelCodec()
    silence, loud = np.asarray(
        codec.encode(np.stack([np.zeros(SR, np.float32), _tone(440.0, 1.0, 1.0)]))
    )
    np.testing.assert_allclose(silence, (np.log(1e-5) + 3.0) / 8.0, rtol=1e-6)
    assert -1.1 < silence.min() and 0.9 < loud.max() < 1.2


def test_mel_round_trip_keeps_pitch():
    codec = MelCodec(n_mels=64, griffin_lim_iters=16)
    tone = _tone(440.0, 0.5)
    wave = codec.decode(codec.encode(tone[None]))
    assert wave.shape == (1, codec.num_latent_frames(len(tone)) * codec.hop_length)
    spectrum = np.abs(np.fft.rfft(wave[0] * np.hanning(wave.shape[1])))
    peak = np.fft.rfftfreq(wave.shape[1], 1 / SR)[np.argmax(spectrum)]
    assert abs(peak - 440.0) < 0.05 * 440.0, peak
    assert 0.5 < np.sqrt(np.mean(wave**2)) / np.sqrt(np.mean(tone**2)) < 2.0


def test_mel_decode_of_out_of_range_latents_is_finite():
    """Strongly guided samples from a young model reach latents the encoder never makes."""
    codec = MelCodec(griffin_lim_iters=2)
    loud = np.asarray(codec.encode(_tone(440.0, 0.2, 1.0)[None]))
    wave = codec.decode(np.full((1, 8, codec.n_mels), 1e3, np.float32))
    assert np.isfinite(wave).all()
    assert np.isfinite(codec.decode(np.full((1, 8, codec.n_mels), -1e3, np.float32))).all()
    assert loud.max() * LOG_MEL_SCALE + LOG_MEL_MEAN < 2.0 * np.log(codec.n_fft)  # not clipped


def test_text_tokenizer_is_deterministic_and_padded():
    encoder = make_text_encoder(tiny.get_config())  # max_len 16
    ids, mask = encoder.tokenize(["A red ball, bounces!", "a RED ball bounces", ""])
    assert ids.shape == mask.shape == (3, 16) and ids.dtype == np.int32 and mask.dtype == bool
    np.testing.assert_array_equal(ids[0], ids[1])  # case and punctuation do not matter
    assert mask[0].sum() == 5 and ids[0, 4] == END_ID and (ids[0, 5:] == 0).all()
    assert (ids[0, :4] >= 2).all() and (ids[0, :4] < encoder.vocab_size).all()
    assert mask[2].tolist() == [True] + [False] * 15  # an empty prompt keeps its end token
    # Stable across runs and processes (crc32, not Python's salted hash).
    np.testing.assert_array_equal(
        ids[0, :4],
        [2 + v % (encoder.vocab_size - 2) for v in (3904355907, 4200685455, 1949452379, 154868399)],
    )


def test_text_truncation_warns_with_prompt(caplog):
    encoder = make_text_encoder(tiny.get_config())
    prompt = " ".join(["ball"] * 40)
    with caplog.at_level(logging.WARNING):
        ids, mask = encoder.tokenize([prompt])
    assert mask.all() and ids[0, -1] == END_ID
    assert "ball ball" in caplog.text and "max_len=16" in caplog.text


def test_text_module_embeds():
    config = tiny.get_config()
    encoder = make_text_encoder(config)
    ids, _ = encoder.tokenize(["a red ball", "a blue ball bounces"])
    params = jax.jit(encoder.module.init)(jax.random.key(0), ids)
    out = jax.jit(encoder.module.apply)(params, ids)
    assert out.shape == (2, 16, config.model.text_dim) and encoder.trainable
    assert np.isfinite(np.asarray(out)).all()
    boxed = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(p, nn.Partitioned) for p in boxed)  # every parameter has axis names
    assert ("vocab", "embed") in [tuple(p.names) for p in boxed]


def test_encode_transcript():
    ids = encode_transcript(["hi", "", "é" * 40], max_len=8)
    assert ids.dtype == np.int32 and ids.shape == (3, 8)
    assert ids[0].tolist() == [ord("h") + 1, ord("i") + 1] + [0] * 6
    assert (ids[1] == 0).all()
    assert (ids[2] > 0).all() and ids.max() < 256
