"""The MMAudio audio codec (mel front end + 1-D VAE + BigVGAN), which has no reference package:
the importer against MMAudio's state-dict layout (its keys written out here from the
constructors of `mmaudio/ext/autoencoder/vae.py` and `vae_modules.py`), a tiny VAE trained from
scratch so that encode -> decode reconstructs a tone and noise, the latent rate and frame times,
and MMAudio's mel recipe (its `MelConverter`, in torch ops) where torch is installed."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import harmony_5b
from harmony_jax.codecs import (
    bigvgan_weights,
    make_audio_codec,
    mmaudio_vae_weights,
)
from harmony_jax.codecs.bigvgan import BigVGANConfig
from harmony_jax.codecs.mmaudio import VARIANTS, MMAudioCodec, Variant, log_mel
from harmony_jax.codecs.mmaudio_vae import MMAudioVAE, VAEConfig, fold_mp_weight
from harmony_jax.convert import mmaudio_vae as convert_vae
from harmony_jax.weights import store
from harmony_jax.weights.state_dict import StateDictMismatchError

REPO = os.path.join(os.path.dirname(__file__), "..")

SR = 16000
TINY_VAE = VAEConfig(n_mels=80, embed_dim=20, hidden_dim=16)  # the 16 kHz VAE, narrowed
TINY_VOCODER = BigVGANConfig(
    num_mels=80,
    upsample_rates=(16, 16),
    upsample_kernel_sizes=(32, 32),
    upsample_initial_channel=8,
    resblock_kernel_sizes=(3,),
    resblock_dilation_sizes=((1,),),
)
TINY = Variant(SR, 1024, 256, 10.0, TINY_VAE, TINY_VOCODER)  # MMAudio's 16 kHz front end


def mmaudio_keys(
    data_dim: int, embed_dim: int, dim: int, ch_mult=(1, 2, 4), blocks=2, down_layers=(0,)
) -> dict[str, tuple[int, ...]]:
    """{key: shape} of MMAudio's `VAE(data_dim, embed_dim, hidden_dim=dim)` state dict, as its
    Encoder1D / Decoder1D / ResnetBlock1D / AttnBlock1D constructors lay it out."""
    keys = {"data_mean": (1, data_dim, 1), "data_std": (1, data_dim, 1)}

    def resnet(prefix, c_in, c_out):
        keys.update(
            {
                f"{prefix}.conv1.weight": (c_out, c_in, 3),
                f"{prefix}.conv2.weight": (c_out, c_out, 3),
            }
        )
        if c_in != c_out:
            keys[f"{prefix}.nin_shortcut.weight"] = (c_out, c_in, 1)

    def middle(prefix, c):
        resnet(f"{prefix}.mid.block_1", c, c)
        keys.update(
            {
                f"{prefix}.mid.attn_1.qkv.weight": (3 * c, c, 1),
                f"{prefix}.mid.attn_1.proj_out.weight": (c, c, 1),
            }
        )
        resnet(f"{prefix}.mid.block_2", c, c)

    keys["encoder.conv_in.weight"] = (dim, data_dim, 3)
    in_ch_mult = (1, *ch_mult)
    for i in range(len(ch_mult)):
        block_in, block_out = dim * in_ch_mult[i], dim * ch_mult[i]
        for j in range(blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i in down_layers:
            keys[f"encoder.down.{i}.downsample.conv1.weight"] = (block_in, block_in, 1)
            keys[f"encoder.down.{i}.downsample.conv2.weight"] = (block_in, block_in, 1)
    middle("encoder", block_in)
    keys.update(
        {"encoder.conv_out.weight": (2 * embed_dim, block_in, 3), "encoder.learnable_gain": ()}
    )

    block_in = dim * ch_mult[-1]
    keys["decoder.conv_in.weight"] = (block_in, embed_dim, 3)
    middle("decoder", block_in)
    for i in reversed(range(len(ch_mult))):
        block_out = dim * ch_mult[i]
        for j in range(blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i in [d + 1 for d in down_layers]:
            keys[f"decoder.up.{i}.upsample.conv.weight"] = (block_in, block_in, 3)
    keys.update({"decoder.conv_out.weight": (data_dim, block_in, 3), "decoder.learnable_gain": ()})
    return keys


def _random_state(keys: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in keys.items()}
    state["data_std"] = np.abs(state["data_std"]) + 0.5
    return state


def _tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(seconds: float) -> np.ndarray:
    return (0.3 * np.random.default_rng(1).standard_normal(int(seconds * SR))).astype(np.float32)


# ---- importer


@pytest.mark.parametrize("variant", ["16k", "44k"])
def test_layout_is_mmaudios(variant):
    vae = VARIANTS[variant].vae
    assert mmaudio_vae_weights.upstream_shapes(vae) == mmaudio_keys(
        vae.n_mels, vae.embed_dim, vae.hidden_dim
    )


def test_import_normalises_weights_and_names_every_mismatch():
    state = _random_state(mmaudio_keys(80, 20, 16))
    assert mmaudio_vae_weights.config_from_state(state, "state") == TINY_VAE
    params, mean, std = mmaudio_vae_weights.read_vae(state, TINY_VAE)
    w = state["encoder.down.1.block.0.nin_shortcut.weight"]  # [O, I, 1]
    kernel = params["encoder/down_1/block_0/nin_shortcut/kernel"]  # [1, I, O]
    np.testing.assert_allclose(kernel, fold_mp_weight(w).transpose(2, 1, 0))
    # MMAudio's remove_weight_norm leaves each output channel of norm 1 (up to its eps).
    norms = np.sqrt(np.sum(np.square(kernel), axis=(0, 1)))
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)
    assert params["decoder/learnable_gain"] == state["decoder.learnable_gain"]
    np.testing.assert_array_equal(mean, state["data_mean"].reshape(-1))
    np.testing.assert_array_equal(std, state["data_std"].reshape(-1))

    del state["decoder.mid.attn_1.qkv.weight"]
    state["encoder.down.0.attn.0.qkv.weight"] = np.zeros((48, 16, 1), np.float32)
    state["decoder.up.1.upsample.conv.weight"] = np.zeros((32, 32, 1), np.float32)
    with pytest.raises(StateDictMismatchError) as e:
        mmaudio_vae_weights.read_vae(state, TINY_VAE)
    for part in (
        "1 missing: decoder.mid.attn_1.qkv.weight",
        "1 unexpected: encoder.down.0.attn.0.qkv.weight",
        "decoder.up.1.upsample.conv.weight (32, 32, 1) (expected (32, 32, 3))",
    ):
        assert part in str(e.value)


def test_convert_cli_then_codec_loads_it(tmp_path):
    torch = pytest.importorskip("torch")
    state = _random_state(mmaudio_keys(80, 20, 16))
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "v1-16.pth")
    dst = tmp_path / "vae"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "harmony_jax.convert",
            "mmaudio-vae",
            f"--src={tmp_path / 'v1-16.pth'}",
            f"--dst={dst}",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    from_pth = mmaudio_vae_weights.load_vae(str(tmp_path / "v1-16.pth"), TINY_VAE)
    from_orbax = mmaudio_vae_weights.load_vae(str(dst), TINY_VAE)
    jax.tree.map(np.testing.assert_array_equal, from_orbax, from_pth)
    with pytest.raises(StateDictMismatchError, match="MMAudio VAE checkpoint"):
        mmaudio_vae_weights.load_vae(
            str(dst), VARIANTS["16k"].vae
        )  # the full-size model: shapes differ
    state["data_mean"] = state["data_mean"][:, :40]
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "bad.pth")
    with pytest.raises(StateDictMismatchError):
        convert_vae.convert_checkpoint(str(tmp_path / "bad.pth"), str(tmp_path / "out"), None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


# ---- the codec


def _save_codec(folder, params, mean, std) -> MMAudioCodec:
    """A tiny-variant codec reading `params` and a random vocoder from orbax under `folder`."""
    store.save_tree(
        {
            "params": params,
            "data_mean": np.asarray(mean, np.float32),
            "data_std": np.asarray(std, np.float32),
        },
        folder / "vae",
    )
    rng = np.random.default_rng(2)
    vocoder = {
        k: (rng.standard_normal(v.shape) / np.sqrt(np.prod(v.shape[:-1]))).astype(np.float32)
        for k, v in bigvgan_weights.bigvgan_spec(TINY_VOCODER).items()
    }
    store.save_tree({"params": traverse_util.unflatten_dict(vocoder, sep="/")}, folder / "vocoder")
    return MMAudioCodec(
        path=str(folder / "vae"), vocoder_path=str(folder / "vocoder"), variant=TINY
    )


@pytest.fixture(scope="module")
def clips():
    """A tone and noise, 1 s each, their log-mel and its per-band statistics."""
    wave = jnp.asarray(np.stack([_tone(1.0), _noise(1.0)]))  # [2, S]
    mel = log_mel(wave, TINY)  # [2, 62, 80]
    return wave, mel, np.asarray(mel.mean((0, 1))), np.asarray(mel.std((0, 1))) + 1e-3


@pytest.fixture(scope="module")
def untrained(clips, tmp_path_factory):
    """(params, codec): MMAudio's initialisation (unit-Gaussian MPConv weights, normalised as
    its remove_weight_norm does) through the importer, and the clips' mel statistics."""
    _, _, mean, std = clips
    state = _random_state(mmaudio_keys(80, 20, 16))
    state.update(
        dict.fromkeys(
            ("encoder.learnable_gain", "decoder.learnable_gain"), np.zeros((), np.float32)
        )
    )
    params, _, _ = mmaudio_vae_weights.read_vae(state, TINY_VAE)
    params = traverse_util.unflatten_dict(params, sep="/")
    return params, _save_codec(tmp_path_factory.mktemp("untrained"), params, mean, std)


_OPTIMIZER = optax.adam(3e-3)
STEPS = 100


@jax.jit
def _fit_step(params, opt_state, mel_norm):
    """Adam on the reconstruction of normalised mel through the posterior mean."""

    def loss(p):
        return jnp.mean(jnp.square(MMAudioVAE(TINY_VAE).apply({"params": p}, mel_norm) - mel_norm))

    grads = jax.grad(loss)(params)
    updates, opt_state = _OPTIMIZER.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state


def test_round_trip_after_a_short_fit(clips, untrained, tmp_path):
    wave, mel, mean, std = clips
    params, untrained_codec = untrained

    def round_trip_error(codec: MMAudioCodec) -> np.ndarray:
        latents = codec.encode(wave)
        assert latents.shape == (2, 31, 20)
        rebuilt = codec.decode_mel(latents)  # [2, 62, 80]
        return np.sqrt(np.mean(np.square((rebuilt - mel) / std), axis=(1, 2)))  # per clip

    before = round_trip_error(untrained_codec)
    opt_state = _OPTIMIZER.init(params)
    for _ in range(STEPS):
        params, opt_state = _fit_step(params, opt_state, (mel - mean) / std)
    codec = _save_codec(tmp_path, params, mean, std)
    after = round_trip_error(codec)
    print(
        f"normalised-mel RMS error (tone, noise): untrained {before}, after {STEPS} steps {after}"
    )
    assert np.all(after < 0.25 * before)

    audio = codec.decode(codec.encode(wave))  # through the (random) vocoder
    assert audio.shape == (2, 31 * 512) and audio.dtype == np.float32
    assert np.all(np.isfinite(audio)) and np.max(np.abs(audio)) <= 1.0


def test_latent_rate_and_frame_times(untrained):
    codec = untrained[1]
    assert codec.latent_rate == 31.25 and codec.latent_channels == 20
    for seconds, frames in ((1, 31), (5, 156), (8, 250)):
        wave = jnp.asarray(_tone(seconds)[None])
        assert codec.num_latent_frames(wave.shape[1]) == frames == int(seconds * 31.25)
        assert codec.encode(wave).shape == (1, frames, 20)
        np.testing.assert_allclose(codec.frame_times(frames), (np.arange(frames) + 0.5) / 31.25)
    codec_44k = MMAudioCodec(path="", vocoder_path="", variant=VARIANTS["44k"])
    assert codec_44k.latent_channels == 40 and round(codec_44k.latent_rate, 2) == 43.07
    codec_5b = make_audio_codec(harmony_5b.get_config())  # reads no weights until used
    assert isinstance(codec_5b, MMAudioCodec) and codec_5b.latent_rate == 31.25
    assert codec_5b.latent_channels == harmony_5b.get_config().model.audio.in_channels
    with pytest.raises(ValueError, match="config.codecs.audio.path is empty"):
        codec_5b.encode(jnp.zeros((1, SR)))


def test_mel_front_end_matches_mmaudios_recipe():
    torch = pytest.importorskip("torch")
    librosa = pytest.importorskip("librosa")
    wave = np.stack([_tone(0.5), 1.5 * _noise(0.5)])  # noise beyond [-1, 1]: MMAudio clamps
    for variant in VARIANTS.values():
        n_fft, hop = variant.n_fft, variant.hop_length
        # mmaudio/ext/mel_converter.py, MelConverter.forward (center=False)
        x = torch.from_numpy(wave).clamp(-1, 1)
        x = torch.nn.functional.pad(x.unsqueeze(1), [(n_fft - hop) // 2] * 2, mode="reflect")[:, 0]
        spec = torch.stft(
            x,
            n_fft,
            hop_length=hop,
            win_length=n_fft,
            window=torch.hann_window(n_fft),
            center=False,
            return_complex=True,
        )
        spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
        basis = torch.from_numpy(
            librosa.filters.mel(sr=variant.sample_rate, n_fft=n_fft, n_mels=variant.vae.n_mels)
        )
        spec = torch.clamp(basis @ spec, min=1e-5)
        want = (torch.log10(spec) if variant.log_base == 10.0 else torch.log(spec)).numpy()
        got = np.asarray(log_mel(jnp.asarray(wave), variant)).transpose(0, 2, 1)
        assert got.shape == want.shape
        # float32 FFTs differ by rounding far below the loudest bin: compare mel magnitudes.
        linear_got, linear_want = variant.log_base**got, variant.log_base**want
        err = np.max(np.abs(linear_got - linear_want)) / np.max(linear_want)
        assert err < 1e-5, err
