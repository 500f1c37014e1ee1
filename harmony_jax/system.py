"""The assembled system of a run: DiT + codecs + text encoder, and the glue from raw media and
token ids to latents and `Conditioning`. Train, sample, plan and the benchmarks all build one.

Trainable parameters live in one tree `{'dit': ..., 'text': ...}` ('text' only when the text
encoder is trained with the model, as the demo's is).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmony_jax.codecs import (
    AudioCodec,
    TextEncoder,
    VideoCodec,
    make_audio_codec,
    make_text_encoder,
    make_video_codec,
)
from harmony_jax.codecs.precomputed import PrecomputedAudio, PrecomputedText, PrecomputedVideo
from harmony_jax.codecs.text import TranscriptTokenizer
from harmony_jax.data.sounding_shapes import WORLD_COLORS
from harmony_jax.diffusion import flow
from harmony_jax.model import Conditioning, HarmonyDiT, ModelConfig
from harmony_jax.model.lora import LoraSpec, adapt
from harmony_jax.parallel.sharding import axis_rules

Params = Any


@dataclasses.dataclass(frozen=True)
class ClipGeometry:
    """One clip as the run reads it (`config.data`): what every batch and latent is shaped by,
    and the source it was trained on."""

    num_frames: int
    height: int
    width: int
    fps: float
    sample_rate: int
    ref_audio_seconds: float = 0.0  # the reference-voice prefix (0: none)
    ball_radius: float = 0.1  # the sounding-shapes world's balls, a fraction of the short side
    colors: tuple[str, ...] = WORLD_COLORS  # the sounding-shapes world's palette (data.colors)
    max_balls: int = 2  # the sounding-shapes world's most balls in a clip (data.max_balls)
    source: str = "sounding_shapes"  # config.data.source

    @property
    def num_samples(self) -> int:
        return int(round(self.num_frames / self.fps * self.sample_rate))

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict) -> ClipGeometry:
        return cls(
            num_frames=int(data.num_frames),
            height=int(data.height),
            width=int(data.width),
            fps=float(data.fps),
            sample_rate=int(data.sample_rate),
            ref_audio_seconds=float(data.ref_audio_seconds),
            ball_radius=float(data.ball_radius),
            colors=tuple(data.colors),
            max_balls=int(data.max_balls),
            source=str(data.source),
        )


@dataclasses.dataclass(frozen=True)
class SamplerDefaults:
    """How a run samples wherever a caller says nothing else: `config.sample`, the run's seed,
    and whether it starts from a reference first frame (trained on them: `cts.ref_image_prob`)."""

    steps: int
    shift: float
    guidance: str
    s_v: float
    s_a: float
    cfg_scale: float
    solver: str
    seed: int = 0
    ref_image: bool = False

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> SamplerDefaults:
        s = config.sample
        return cls(
            steps=int(s.steps),
            shift=float(s.shift),
            guidance=str(s.guidance),
            s_v=float(s.s_v),
            s_a=float(s.s_a),
            cfg_scale=float(s.cfg_scale),
            solver=str(s.solver),
            seed=int(config.seed),
            ref_image=config.cts.ref_image_prob > 0,
        )


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jit and caches key on it
class System:
    """Built once from the run config (`build_system`); holds the typed sections its users read,
    never the config itself."""

    model_config: ModelConfig
    clip: ClipGeometry
    sampler: SamplerDefaults
    prediction: str  # config.flow.prediction: what the network outputs ('velocity' | 'x0')
    # config.flow.frame_noise_correlation: the video noise the model was trained from, which
    # its sampler must start from (flow.frame_noise)
    frame_noise_correlation: float
    axis_rules: tuple  # logical axis -> mesh axes for the run's mesh (`parallel.axis_rules`)
    video_codec: VideoCodec
    audio_codec: AudioCodec
    text_encoder: TextEncoder
    transcript_tokenizer: TranscriptTokenizer
    inputs: str = "media"  # 'media': frames and waveforms; 'latents': see `latent_inputs`
    lora: LoraSpec | None = None  # a LoRA run's adapters (`training.lora.with_lora`)

    @property
    def model(self) -> HarmonyDiT:
        model = HarmonyDiT(self.model_config)
        return model if self.lora is None else adapt(model, self.lora)

    # ---- geometry of one clip, from the data config and the codecs
    @property
    def num_samples(self) -> int:
        return self.clip.num_samples

    @property
    def video_latent_shape(self) -> tuple[int, int, int, int]:
        d = self.clip
        tv, h, w = self.video_codec.latent_shape(d.num_frames, d.height, d.width)
        return tv, h, w, self.video_codec.latent_channels

    @property
    def audio_latent_shape(self) -> tuple[int, int]:
        codec = self.audio_codec
        return codec.num_latent_frames(self.num_samples), codec.latent_channels

    @property
    def text_len(self) -> int:
        return self.text_encoder.max_len

    # ---- raw -> model inputs
    def embed_text(self, params: Params, ids: jax.Array) -> jax.Array:
        """A trained encoder's parameters are `params['text']`; a frozen one (umT5) brings its
        own, `text_encoder.params`, loaded on first use and never part of the trained tree."""
        enc = self.text_encoder
        text_params = params.get("text", {}) if enc.trainable else getattr(enc, "params", {})
        emb = enc.module.apply({"params": text_params}, ids)
        return emb if enc.trainable else jax.lax.stop_gradient(emb)

    def conditioning(self, params: Params, batch: dict[str, jax.Array]) -> Conditioning:
        """Conditioning of a batch with token ids (keys as `data.pipeline` produces them)."""
        b = batch["video_text_ids"].shape[0]
        tv, ta = self.video_latent_shape[0], self.audio_latent_shape[0]
        ref = batch.get("ref_audio")
        return Conditioning(
            video_text=self.embed_text(params, batch["video_text_ids"]),
            video_text_mask=batch["video_text_mask"],
            audio_text=self.embed_text(params, batch["audio_text_ids"]),
            audio_text_mask=batch["audio_text_mask"],
            transcript=batch["transcript_ids"],
            video_time=_per_sample(self.video_codec.frame_times(tv), b),  # [B, Tv] seconds
            audio_time=_per_sample(self.audio_codec.frame_times(ta), b),  # [B, Ta] seconds
            ref_audio=None if ref is None else self.audio_codec.encode(ref),
        )

    def encode_media(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Clean latents (video [B, Tv, h, w, Cv], audio [B, Ta, Ca]) of a batch's media."""
        return self.video_codec.encode(batch["video"]), self.audio_codec.encode(batch["audio"])

    def denoiser(self, params: Params, rng: jax.Array | None = None) -> Callable:
        """The denoiser contract of `model.conditioning` bound to these parameters: velocities,
        whatever the network predicts (`config.flow.prediction`). `rng`: LoRA's dropout."""
        model, rngs = self.model, None if rng is None else {"dropout": rng}
        net = lambda v, a, tv, ta, cond: model.apply(
            {"params": params["dit"]}, v, a, tv, ta, cond, rngs=rngs
        )
        return flow.x0_denoiser(net) if self.prediction == "x0" else net

    # ---- parameters
    def example_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """One batch's shapes: raw media, or (`inputs='latents'`) latents and, for a frozen
        text encoder, its embeddings [B, L, Dt] under the `*_text_ids` keys."""
        d = self.clip
        S = jax.ShapeDtypeStruct
        L, Lc = self.text_len, self.model_config.transcript.max_len
        text = S((batch_size, L), jnp.int32)
        batch = dict(
            video=S((batch_size, d.num_frames, d.height, d.width, 3), jnp.float32),
            audio=S((batch_size, self.num_samples), jnp.float32),
            video_text_ids=text,
            video_text_mask=S((batch_size, L), bool),
            audio_text_ids=text,
            audio_text_mask=S((batch_size, L), bool),
            transcript_ids=S((batch_size, Lc), jnp.int32),
        )
        if self.inputs == "latents":
            batch.update(
                video=S((batch_size, *self.video_latent_shape), jnp.float32),
                audio=S((batch_size, *self.audio_latent_shape), jnp.float32),
            )
            if not self.text_encoder.trainable:
                text = S((batch_size, L, self.text_encoder.dim), jnp.float32)
                batch.update(video_text_ids=text, audio_text_ids=text)
        return batch

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Params:
        """Boxed (logically partitioned) parameters; wrap in `parallel.sharded_init` to shard."""
        k_text, k_dit = jax.random.split(rng)
        params = {}
        if self.text_encoder.trainable:
            params["text"] = self.text_encoder.module.init(k_text, batch["video_text_ids"])[
                "params"
            ]
        cond = self.conditioning(params, batch)
        video, audio = self.encode_media(batch)
        b = video.shape[0]
        t_v = jnp.zeros((b, video.shape[1]), jnp.float32)
        t_a = jnp.zeros((b, audio.shape[1]), jnp.float32)
        rngs = k_dit if self.lora is None else {"params": k_dit, "dropout": k_dit}
        params["dit"] = self.model.init(rngs, video, audio, t_v, t_a, cond)["params"]
        return params


def latent_inputs(system: System, empty_prompt: np.ndarray | None) -> System:
    """`system` fed precomputed latents (`python -m harmony_jax.encode`): same model, geometry
    and decoders, the encoders replaced by the identity, so their weights are never read. A
    frozen text encoder becomes its stored embeddings (`empty_prompt` [n, Dt]: its embedding of
    the empty prompt); a trainable one (the demo's) stays, fed the stored token ids."""
    text = system.text_encoder
    if not text.trainable:
        text = PrecomputedText(
            max_len=text.max_len, dim=text.dim, empty=np.asarray(empty_prompt, np.float32)
        )
    return dataclasses.replace(
        system,
        video_codec=PrecomputedVideo(system.video_codec),
        audio_codec=PrecomputedAudio(system.audio_codec),
        text_encoder=text,
        inputs="latents",
    )


def _per_sample(times: np.ndarray, batch: int) -> jax.Array:
    return jnp.broadcast_to(times.astype(np.float32), (batch, len(times)))


def build_system(config: ml_collections.ConfigDict) -> System:
    """Codecs and text encoder from `config.codecs`, the model from `config.model`; their widths
    must agree, and a mismatch names both keys."""
    video_codec, audio_codec = make_video_codec(config), make_audio_codec(config)
    text_encoder = make_text_encoder(config)
    if config.flow.prediction not in flow.PREDICTIONS:
        raise ValueError(
            f"config.flow.prediction={config.flow.prediction!r}: expected one of {flow.PREDICTIONS}"
        )
    if config.flow.prediction == "x0" and config.init.video_from:
        raise ValueError(
            f"config.init.video_from={config.init.video_from} imports a Wan2.2 "
            f"tower, which predicts velocity; config.flow.prediction='x0' would "
            f"read its output as clean latents (use 'velocity')"
        )
    m = config.model
    if config.init.video_from and m.video.pos_embed != "none":
        raise ValueError(
            f"config.init.video_from={config.init.video_from} imports a Wan2.2 tower, which has "
            f"no absolute position embedding; config.model.video.pos_embed="
            f"{m.video.pos_embed!r} would add one (use 'none')"
        )
    if config.init.video_from and m.video.rope_theta != 10000.0:
        raise ValueError(
            f"config.init.video_from={config.init.video_from} imports a Wan2.2 tower, trained "
            f"with RoPE base 10000; config.model.video.rope_theta={m.video.rope_theta} would move "
            f"its positions (use 10000)"
        )
    pad_to = m.video.text_pad_to
    if config.init.video_from and not pad_to:
        raise ValueError(
            f"config.init.video_from={config.init.video_from} imports a Wan2.2 "
            f"tower, which attends to its caption zero-padded to 512 tokens; "
            f"config.model.video.text_pad_to=0 would mask the pads (set it to 512)"
        )
    if pad_to and config.codecs.text.max_len > pad_to:
        raise ValueError(
            f"config.codecs.text.max_len={config.codecs.text.max_len} exceeds "
            f"config.model.video.text_pad_to={pad_to}"
        )
    for key, want, have in (
        ("model.video.in_channels", m.video.in_channels, video_codec.latent_channels),
        ("model.audio.in_channels", m.audio.in_channels, audio_codec.latent_channels),
        ("model.text_dim", m.text_dim, text_encoder.dim),
    ):
        if want != have:
            raise ValueError(
                f"config.{key}={want} but the codec configured in config.codecs "
                f"produces {have} channels"
            )
    model_config = ModelConfig.from_config(m, video_latent_rate=video_codec.latent_rate)
    return System(
        model_config=model_config,
        clip=ClipGeometry.from_config(config.data),
        sampler=SamplerDefaults.from_config(config),
        prediction=str(config.flow.prediction),
        frame_noise_correlation=float(config.flow.frame_noise_correlation),
        axis_rules=axis_rules(config),
        video_codec=video_codec,
        audio_codec=audio_codec,
        text_encoder=text_encoder,
        transcript_tokenizer=_transcript_tokenizer(config, model_config),
    )


def _transcript_tokenizer(
    config: ml_collections.ConfigDict, model_config: ModelConfig
) -> TranscriptTokenizer:
    """F5-TTS vocabulary ids when `config.init.transcript_from` names a `convert f5-text`
    checkpoint (its vocab must fit `model.transcript.vocab_size`), else the demo's byte ids."""
    max_len = model_config.transcript.max_len
    path = config.init.transcript_from
    if not path:
        return TranscriptTokenizer(max_len)
    from harmony_jax.convert.f5_text import check_vocab, load_vocab

    vocab = load_vocab(path)
    check_vocab(vocab, model_config.transcript, f"config.init.transcript_from={path}")
    return TranscriptTokenizer(max_len, vocab)
