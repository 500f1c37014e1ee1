"""int8 weight-only kernels (harmony_jax.quantize) on a tiny umT5 text encoder, whose layers are
scanned as the DiT's are: qwix's scales per layer and output channel, output close to float;
and the frozen encoder freed once the prompts are embedded."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix

from harmony_jax import generation
from harmony_jax.codecs.umt5 import UMT5Config, UMT5Encoder
from harmony_jax.codecs.umt5_text import UMT5TextEncoder
from harmony_jax.quantize import int8_provider, is_quantized, param_bytes, quantize_tree


def test_int8_umt5_is_close_to_float():
    config = UMT5Config(
        vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_buckets=8
    )
    float_module = UMT5Encoder(config)
    ids = jnp.asarray([[5, 9, 17, 3, 1, 0, 0, 0]], jnp.int32)
    params = float_module.init(jax.random.key(0), ids)["params"]
    module = qwix.quantize_model(float_module, int8_provider())
    quantized = quantize_tree(module, jax.device_get(params), ids.shape[1])
    wo = quantized["layers"]["wo"]["kernel"]  # [layers, d_ff, d_model]
    assert is_quantized(wo) and wo.array.qvalue.dtype == jnp.int8
    assert wo.array.qvalue.shape == (2, 48, 32) and wo.array.scale.shape == (2, 1, 32)
    kernels = [x for x in jax.tree.leaves(quantized, is_leaf=is_quantized) if is_quantized(x)]
    assert len(kernels) == 7  # q, k, v, o, wi_0, wi_1, wo: each stacked over the layers
    want = float_module.apply({"params": params}, ids)
    got = module.apply({"params": quantized}, ids)
    err = float(jnp.abs(got - want).max() / jnp.abs(want).max())
    print(f"int8 umT5: max error {err:.4f} of the largest output; {param_bytes(quantized)} bytes")
    assert err < 0.08  # measured: 0.027
    np.testing.assert_array_equal(got[:, 5:], 0.0)  # padding still zeroed


def test_frozen_text_encoder_is_released_and_read_again():
    """`sample` embeds the prompts, then frees umT5's weights (read again on the next use)."""
    encoder = UMT5TextEncoder(path="nowhere", max_len=8)
    encoder.__dict__["params"] = {"embedding": jnp.zeros((4, 2))}  # as if read
    generation.release_text_encoder(types.SimpleNamespace(text_encoder=encoder))
    assert "params" not in encoder.__dict__
    with pytest.raises(FileNotFoundError, match="nowhere: no such checkpoint"):
        encoder.params  # the next use reads the checkpoint again
