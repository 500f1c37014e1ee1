"""The paper's model: the Wan2.2-TI2V-5B video tower, an audio tower of the same depth and width
(as Ovi, so a published audio tower can seed it), GLDI after every layer pair; joint AV stage.

    python -m harmony_jax.train --config configs/harmony_5b.py --workdir gs://bucket/run
"""

from harmony_jax.defaults import base_config


def get_config():
    c = base_config()
    m = c.model
    m.depth = 30
    m.text_dim = 4096  # umT5-XXL
    m.freq_dim = 256
    m.video.update(
        dim=3072, heads=24, ffn_dim=14336, in_channels=48, patch=(1, 2, 2), text_pad_to=512
    )  # Wan2.2's caption padding, as upstream computes it
    m.audio.update(dim=3072, heads=24, ffn_dim=14336, in_channels=20)  # MMAudio 16 kHz latents
    m.transcript.update(vocab_size=2546, dim=512, conv_layers=4, conv_mult=2, max_len=512)
    m.dtype = "bfloat16"
    m.remat = "full"
    m.attention = "auto"

    c.codecs.video.update(name="wan2.2")  # stride (4, 16, 16), 48 channels
    c.codecs.audio.update(name="mmaudio")  # 31.25 latents/s, 20 channels
    c.codecs.text.update(name="umt5", max_len=512)

    c.data.update(
        source="clip_folder",
        fps=24.0,
        num_frames=121,
        height=704,
        width=1280,
        ref_audio_seconds=2.0,
    )
    c.batch_size = 128
    c.total_steps = 10_000
    c.checkpoint_every = 500
    c.optim.update(lr=1e-5, warmup_steps=0, weight_decay=0.0, grad_clip=1.0, ema_decay=0.9999)
    c.cts.ref_image_prob = 0.5
    c.sample.update(steps=40, shift=5.0, guidance="syncfg", s_v=3.0, s_a=2.0)
    c.mesh.update(data=-1, fsdp=8, tensor=1)
    return c
