"""The run configuration's schema and defaults; `configs/*.py` start from here and override.

Every key a run can use is here, so `--config.x.y=...` typos fail loudly (ml_collections
refuses unknown keys) and one test can load every config.
"""

import ml_collections

from harmony_jax.compile_cache import DEFAULT_DIR
from harmony_jax.data.sounding_shapes import WORLD_COLORS

# LoRA's default targets: the attention q, k, v, out and FFN kernels of both towers' blocks
# (scanned 'layers/' or unrolled 'layers_<i>/')
LORA_TARGETS = (
    r"^dit/layers(_\d+)?/(video|audio)_block/((self|cross)_attn/(q|k|v|out)|ffn/fc[12])/kernel$"
)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.log_every = 10
    c.sample_every = 0  # 0: no periodic sampling
    c.num_sample_clips = 2
    c.batch_size = 8  # global batch
    # compiled programs persist here, so a resumed run or the next sample call skips compiling;
    # '' turns it off; JAX_COMPILATION_CACHE_DIR, when set, wins
    c.compile_cache_dir = DEFAULT_DIR

    # ---- model: turned into a frozen `ModelConfig` once; layers never see the run config.
    m = c.model = ml_collections.ConfigDict()
    m.depth = 2  # blocks per tower = number of interaction modules
    m.text_dim = 32  # text-encoder width (4096 for umT5-XXL)
    m.freq_dim = 256  # sinusoidal timestep features
    m.eps = 1e-6
    # text_pad_to: 0 masks padded caption tokens out of the video tower's text cross-attention;
    # 512 is Wan2.2's padding (real-token states zero-padded to 512, all attended), which an
    # imported Wan tower (init.video_from) needs to compute what it does upstream.
    # pos_embed: absolute position added to the video tokens, 'none' (Wan: relative RoPE only,
    # an imported tower needs it) | 'sincos' (fixed) | 'learned'; without one the tower cannot
    # tell a wall from the middle of the frame (model/position.py)
    # rope_theta: base of the video tokens' 3D RoPE frequencies; Wan's 10000 (an imported tower
    # needs it) turns one spatial band of five by an eighth of a turn across a 4-patch grid; a
    # smaller base turns more of them (10: three), i.e. more relative position on small grids
    m.video = ml_collections.ConfigDict(
        dict(
            dim=32,
            heads=2,
            ffn_dim=64,
            in_channels=3,
            patch=(1, 2, 2),
            text_pad_to=0,
            pos_embed="none",
            rope_theta=10000.0,
        )
    )
    m.audio = ml_collections.ConfigDict(dict(dim=32, heads=2, ffn_dim=64, in_channels=16))
    m.transcript = ml_collections.ConfigDict(
        dict(vocab_size=256, dim=32, conv_layers=1, conv_mult=2, max_len=64)
    )
    m.interaction = ml_collections.ConfigDict(
        dict(mode="gldi", window=2.0, rope_align=True)
    )  # window in video latent frames
    # "xla" | "cudnn" | "blockwise" | "splash" (Pallas TPU kernel; interpreted, slowly, off TPU)
    # | "auto" (splash on TPU, cuDNN on GPU, else blockwise for long sequences)
    m.attention = "xla"
    # splash tiles, multiples of 128 (0: the TPU generation's default, v5e 512 .. v6e 2048);
    # band_block: the tile along the audio axis of the A2V / V2A bands (128: blocks outside the
    # band are skipped); fused_bwd: dq, dk, dv in one backward kernel
    m.splash = ml_collections.ConfigDict(
        dict(block_q=0, block_kv=0, block_kv_compute=0, band_block=128, fused_bwd=False)
    )
    m.dtype = "float32"  # compute dtype; params stay float32
    m.param_dtype = "float32"
    m.scan_layers = True
    m.remat = "none"  # 'none' | 'full' | 'dots' | 'dots_no_batch'

    # ---- initial weights of a fresh run (a resumed run restores its own checkpoint instead)
    c.init = ml_collections.ConfigDict(
        dict(
            video_from="",  # `python -m harmony_jax.convert wan` output: the Wan2.2 video tower
            transcript_from="",  # `convert f5-text` output: F5-TTS text-embedding weights + vocab
            # the frozen base of a LoRA run (config.lora.rank > 0): another run's workdir or
            # checkpoint step (its EMA weights where it kept them); '' : this run's own init with
            # video_from / transcript_from imported. Referenced by path + hash, never copied.
            base_from="",
            # full fine-tuning: another run's workdir or checkpoint step whose weights (its EMA
            # where it kept them; a LoRA run's merged) start this run, copied and all trained
            params_from="",
        )
    )

    # ---- LoRA fine-tuning (rank 0: off, every parameter trained). Adapters A [in, r] (random)
    # and B [r, out] (zeros) beside each kernel `targets` matches (a regex searched in parameter
    # paths such as dit/layers/video_block/self_attn/q/kernel), output x W + alpha/r x A B with
    # `dropout` on x's adapter path; `train_also`: a regex of parameters trained in full beside
    # them (e.g. "^dit/layers/interaction/"); everything else is the frozen base (init.base_from).
    c.lora = ml_collections.ConfigDict(
        dict(
            rank=0,
            alpha=32.0,
            targets=LORA_TARGETS,
            train_also="",
            dropout=0.0,
            # the frozen base's storage: 'bfloat16' halves its memory (a bf16-compute model
            # casts its kernels to bf16 anyway; norms and tables then read bf16-rounded values)
            base_dtype="float32",
        )
    )

    # ---- codecs: latent rate and frame times come from here, never hard-coded in the model.
    k = c.codecs = ml_collections.ConfigDict()
    # path: weights of a pretrained codec ('wan2.2': a diffusers vae/ folder, Wan2.2_VAE.pth or
    # `python -m harmony_jax.convert wan-vae` output), read on first encode/decode.
    k.video = ml_collections.ConfigDict(dict(name="pixel", path=""))
    # 'mel': n_mels .. griffin_lim_iters. 'mmaudio': variant '16k' | '44k'; path: MMAudio's VAE
    # (v1-16.pth / v1-44.pth or `convert mmaudio-vae` output), vocoder_path: its BigVGAN (a
    # folder / .pt or `convert bigvgan` output), read on first encode / decode.
    k.audio = ml_collections.ConfigDict(
        dict(
            name="mel",
            n_mels=16,
            n_fft=1024,
            hop_length=256,
            griffin_lim_iters=32,
            variant="16k",
            path="",
            vocoder_path="",
        )
    )
    # path: 'umt5' weights + sentencepiece tokenizer (a transformers / diffusers folder, Wan's
    # .pth, or `python -m harmony_jax.convert umt5` output), read on first use.
    k.text = ml_collections.ConfigDict(dict(name="demo", max_len=16, vocab_size=4096, path=""))

    # ---- data
    d = c.data = ml_collections.ConfigDict()
    d.source = "sounding_shapes"  # 'sounding_shapes' | 'clip_folder' | 'latents' (from encode)
    d.fps = 8.0
    d.num_frames = 16
    d.height = 32
    d.width = 32
    d.sample_rate = 16000
    d.num_clips = 4096  # sounding shapes: size of the (deterministic) world
    d.ball_radius = 0.1  # sounding shapes: ball radius / the frame's short side
    # sounding shapes: the colours clips draw from, names of its palette (red green blue yellow
    # magenta cyan white; each colour's tone has its own pitch); white is left for fine-tunes
    d.colors = WORLD_COLORS
    d.max_balls = 2  # sounding shapes: a clip has 1 to max_balls (1 or 2) balls
    d.root = ""  # clip folder: directory holding the mp4 files and captions.jsonl
    d.skip_bad_files = False
    d.num_workers = 0
    d.ref_audio_seconds = 0.0  # 0: no reference-voice prefix

    # ---- flow matching + Cross-Task Synergy
    # prediction: what the network outputs, 'velocity' (Wan: an imported tower needs it) or
    # 'x0' (clean latents, turned into velocity: a small pixel model need not copy the noise)
    # sigma_sampling: 'uniform' (Wan) or 'logit_normal' (SD3: mostly mid noise), then `shift`;
    # loss: the MSE of the 'velocity' (Wan) or of the 'x0' it implies (sigma^2 x the velocity's,
    # so near-clean frames do not dominate)
    # frame_noise_correlation: between the video noise of any two frames, in training and
    # sampling alike; 0 is Wan's independent noise, > 0 shares a component across frames
    # (PYoCo's mixed prior, diffusion/flow.py; in the demo world 0.8 gave no track: issue 24)
    c.flow = ml_collections.ConfigDict(
        dict(
            shift=5.0,
            prediction="velocity",
            sigma_sampling="uniform",
            loss="velocity",
            frame_noise_correlation=0.0,
        )
    )
    c.cts = ml_collections.ConfigDict(
        dict(
            mode="split",  # 'split' | 'all' | 'joint_only'
            fractions=(0.5, 0.25, 0.25),  # joint, audio-driven video, video-driven audio
            lambda_v=0.1,
            lambda_a=0.3,
            ref_image_prob=0.0,  # fraction of samples whose first latent frame is a clean reference
            caption_dropout=0.1,
        )
    )  # fraction trained on the empty prompt: text CFG's other side

    # ---- sampling (SyncCFG)
    c.sample = ml_collections.ConfigDict(
        dict(
            steps=40, shift=5.0, guidance="syncfg", s_v=3.0, s_a=2.0, cfg_scale=5.0, solver="euler"
        )
    )

    # ---- optimizer
    c.optim = ml_collections.ConfigDict(
        dict(
            lr=1e-4,
            warmup_steps=100,
            schedule="constant",
            end_lr_fraction=0.0,  # 'cosine': decays to lr * end_lr_fraction
            b1=0.9,
            b2=0.999,
            weight_decay=0.0,
            grad_clip=1.0,
            ema_decay=0.0,
            grad_accum=1,
            freeze="",  # regex of parameter paths kept fixed, e.g. "^dit/(video|layers/video)"
            on_nonfinite="skip",
        )
    )  # "skip": drop the update and count it; "halt": stop the run

    # ---- parallelism: mesh axis sizes per slice (-1 = the rest) and logical-axis rules.
    # sequence > 1 adds a 'sequence' axis: video tokens split over it, Ulysses self-attention.
    # dcn_data / dcn_fsdp > 1: multi-slice, each of those axes spans that many slices.
    c.mesh = ml_collections.ConfigDict(
        dict(data=-1, fsdp=1, sequence=1, tensor=1, dcn_data=1, dcn_fsdp=1)
    )
    # ---- several processes (hosts): how long to wait for peers at start-up and at each
    # barrier, after how long a silent (dead) peer fails the run, how long shutdown may take
    c.distributed = ml_collections.ConfigDict(
        dict(
            init_timeout_s=300,
            barrier_timeout_s=1200,
            heartbeat_timeout_s=60,
            shutdown_timeout_s=30,
        )
    )
    c.axis_rules = (  # mesh axes the mesh lacks ('sequence' when 1) drop out
        # parameters
        ("embed", ("fsdp", "sequence")),
        ("kv_embed", ("fsdp", "sequence")),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("text_embed", None),
        ("embed_out", None),
        ("channels", None),
        ("freq", None),
        ("vocab", None),
        ("length", None),
        ("layers", None),
        # activations
        ("batch", ("data", "fsdp")),
        ("act_length", "sequence"),
        ("act_embed", None),
        ("act_heads", "tensor"),
        ("kv", None),
    )
    return c
