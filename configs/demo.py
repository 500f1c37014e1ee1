"""The CPU demo: learn the sounding-shapes world in minutes on a laptop (2 cores).

2 s clips, 16 frames of 24x24 at 8 fps; 4x4-pixel video patches (36 tokens a frame; 48 values
a token, below the width so the noise fits through) and a 32-band log-mel at 31.25 frames/s keep
a train step near a second on 2 cores.
"""

from harmony_jax.defaults import base_config


def get_config():
    c = base_config()
    c.data.update(fps=8.0, num_frames=16, height=24, width=24, num_clips=100_000)
    m = c.model
    m.depth = 4
    m.text_dim = 64
    m.video.update(dim=96, heads=4, ffn_dim=256, in_channels=3, patch=(1, 4, 4))
    m.audio.update(dim=96, heads=4, ffn_dim=256, in_channels=32)
    m.transcript.update(dim=32, conv_layers=1, max_len=8)
    c.codecs.audio.update(n_mels=32, n_fft=1024, hop_length=512, griffin_lim_iters=32)
    c.codecs.text.update(max_len=12, vocab_size=512)

    c.batch_size = 16
    c.total_steps = 600
    c.checkpoint_every = 200
    c.log_every = 25
    c.optim.update(lr=1e-3, warmup_steps=50, grad_clip=1.0, ema_decay=0.0)
    c.flow.shift = 1.0  # small latents: no need to push training towards high noise
    c.sample.update(steps=25, shift=1.0, guidance="syncfg", s_v=3.0, s_a=2.0)
    c.num_sample_clips = 2
    return c
