"""The CPU demo: train on the sounding-shapes world in under 10 minutes on 2 cores.

1.5 s clips, 12 frames of 16x16 at 8 fps, one ball per clip of radius 0.15 of the frame (2.4 px);
4x4-pixel patches give 16 tokens a frame (192 in all) of 48 values each, under the width of 128
(a token narrower than its patch cannot carry the noise through). A fixed sin-cos absolute
position tells the tower where the walls are, where every event of this world happens. A 32-band
log-mel at 31.25 frames/s gives 47 audio tokens. 3400 steps of batch 4 at ~6 steps/s on a 2-core
machine. `configs/demo_long.py` is the same world trained on 2.8x as many samples (README).
"""

from harmony_jax.defaults import base_config


def get_config():
    c = base_config()
    # One ball: with two, the frames of a 10-minute model were blotches (README, finding 6)
    c.data.update(
        fps=8.0,
        num_frames=12,
        height=16,
        width=16,
        ball_radius=0.15,
        max_balls=1,
        num_clips=100_000,
    )
    m = c.model
    m.depth = 3
    m.text_dim = 64
    m.video.update(
        dim=128, heads=4, ffn_dim=256, in_channels=3, patch=(1, 4, 4), pos_embed="sincos"
    )
    m.audio.update(dim=128, heads=4, ffn_dim=256, in_channels=32)
    m.transcript.update(dim=32, conv_layers=1, max_len=8)
    c.codecs.audio.update(n_mels=32, n_fft=1024, hop_length=512, griffin_lim_iters=32)
    c.codecs.text.update(max_len=12, vocab_size=512)
    # The driven tasks weigh as much as the joint one (defaults 0.1 / 0.3): the audio-driven
    # video rows are a third of the rows that teach the video tower its trajectories.
    c.cts.update(lambda_v=1.0, lambda_a=1.0)

    # Batch 4: the step costs half of batch 8's on a CPU, so the budget buys twice the updates.
    c.batch_size = 4
    c.total_steps = 3400
    c.checkpoint_every = 850
    c.log_every = 25
    # A cosine decay and an EMA of the weights: sampling from the raw weights of a constant
    # 1e-3 run gave chance-level A2V/V2A sync (README). An EMA of 0.995: a 200-step horizon.
    c.optim.update(
        lr=3e-3,
        warmup_steps=100,
        grad_clip=1.0,
        schedule="cosine",
        end_lr_fraction=0.02,
        ema_decay=0.995,
    )
    c.flow.shift = 2.0  # small images: less noise than Wan's 720p shift of 5
    c.sample.update(steps=25, shift=2.0, guidance="syncfg", s_v=3.0, s_a=2.0)
    c.num_sample_clips = 2
    return c
