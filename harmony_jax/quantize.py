"""Weight-only int8 for sampling, through qwix's post-training quantization (`qwix.PtqProvider`).

Every `nn.Dense` kernel of the DiT and of a frozen umT5 text encoder (the `dot_general`s with a
parameter operand) is stored as int8 with one
float32 scale per output channel (absmax), and dequantized inside the matmul, where XLA fuses
the two; activations, norms, biases, embeddings and convolutions stay in the sampling dtype.
Matmuls between activations (attention scores) are left to the model's own code: the rule
matches `dot_general` only, and qwix's einsum falls back untouched.

qwix's `quantize_params` does not know that `nn.scan` stacks a layer's kernels along a leading
axis: it quantizes the stacked [layers, in, out] array with the channel axes of one layer's
[in, out] slice, and its scales come out [1, in, 1] where the scanned model reads
[layers, 1, out]. So `quantize_leaf` quantizes each kernel with the leading (stacked) axes added
to qwix's channel axes: per layer, per output channel, exactly what the layer's own call would
have made.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix
from qwix._src.core import qarray
from qwix._src.providers.ptq import WithAux

from harmony_jax.codecs.umt5 import UMT5Encoder
from harmony_jax.codecs.umt5_text import UMT5TextEncoder
from harmony_jax.model import HarmonyDiT, ModelConfig
from harmony_jax.system import System

QUANTIZE = ("none", "int8")


def int8_provider() -> qwix.PtqProvider:
    """Weight-only int8 on every Dense kernel (no activation quantization)."""
    rule = qwix.QuantizationRule(module_path=".*", weight_qtype="int8", op_names=("dot_general",))
    return qwix.PtqProvider([rule])


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedSystem(System):
    """A `System` whose DiT reads int8 kernels (`quantized_params` makes them)."""

    @property
    def model(self) -> nn.Module:
        return _quantized_model(self.model_config)


@functools.lru_cache(maxsize=8)
def _quantized_model(model_config: ModelConfig) -> nn.Module:
    return qwix.quantize_model(HarmonyDiT(model_config), int8_provider())


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedUMT5(UMT5TextEncoder):
    """The frozen umT5 encoder with int8 Dense kernels, quantized one array at a time as its
    checkpoint is read, so its float weights are never all on the device."""

    @functools.cached_property
    def module(self) -> nn.Module:
        return qwix.quantize_model(UMT5Encoder(self.config), int8_provider())

    @functools.cached_property
    def params(self) -> Any:
        from harmony_jax.codecs.umt5_weights import load_umt5

        with jax.ensure_compile_time_eval():  # first use may be inside a trace
            return quantize_tree(self.module, load_umt5(self.path, self.config), self.max_len)


def quantize_tree(module: nn.Module, params: Any, length: int) -> Any:
    """Float `params` (host or device) of the unquantized twin of qwix-quantized `module`, a
    text encoder over int32 ids [1, length], with every kernel qwix quantizes as int8."""
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    abstract = flax.traverse_util.flatten_dict(
        jax.eval_shape(module.init, jax.random.key(0), ids)["params"]
    )
    flat = flax.traverse_util.flatten_dict(params)
    out = {}
    for path in list(flat):
        x = jnp.asarray(flat.pop(path))  # one float array on the device at a time
        out[path] = quantize_leaf(x, abstract[path]) if is_quantized(abstract[path]) else x
    return flax.traverse_util.unflatten_dict(out)


def quantized_system(system: System, quantize: str) -> System:
    """`system` as sampled with `quantize` ('none': itself): int8 kernels in the DiT and in a
    frozen umT5 text encoder (a trained one, the demo's, is small and stays as it is)."""
    if quantize not in QUANTIZE:
        raise ValueError(f"--quantize {quantize!r} is not one of {QUANTIZE}")
    if quantize == "none" or isinstance(system, QuantizedSystem):
        return system
    fields = {f.name: getattr(system, f.name) for f in dataclasses.fields(System)}
    text = fields["text_encoder"]
    if type(text) is UMT5TextEncoder:
        fields["text_encoder"] = QuantizedUMT5(text.path, text.max_len, text.config)
    return QuantizedSystem(**fields)


def abstract_dit(system: QuantizedSystem) -> Any:
    """The quantized DiT's parameters as boxed ShapeDtypeStructs (kernels as `WithAux` of int8
    `QArray`s, logical axis names kept: the scale's reduced axis is named None)."""
    batch = system.example_batch(1)
    return jax.eval_shape(lambda b: system.init(jax.random.key(0), b), batch)["dit"]


def _stacked_axes(shape: tuple[int, ...], how: qarray.HowToQuantize, scale: tuple[int, ...]):
    """How many leading axes of a kernel of `shape` were stacked by `nn.scan`: the count whose
    per-channel scales have the shape the quantized model reads."""
    for stacked in range(len(shape)):
        kept = set(range(stacked)) | {a + stacked for a in how.channelwise_axes}
        if tuple(n if i in kept else 1 for i, n in enumerate(shape)) == tuple(scale):
            return stacked
    raise ValueError(f"no stacking of a {shape} kernel gives qwix's scale shape {scale}")


def quantize_leaf(param: jax.Array, abstract: WithAux) -> WithAux:
    """`param` (float, any leading scan axes) as the int8 `WithAux` `abstract` describes."""
    how, scale = abstract.how, nn.meta.unbox(abstract.array.scale).shape
    stacked = _stacked_axes(param.shape, how, scale)
    per_layer = dataclasses.replace(
        how,
        channelwise_axes=[*range(stacked), *(a + stacked for a in how.channelwise_axes)],
        tiled_axes={a + stacked: t for a, t in how.tiled_axes.items()},
    )
    return abstract.replace(array=qarray.quantize(param.astype(jnp.float32), per_layer))


def is_quantized(leaf: Any) -> bool:
    return isinstance(leaf, WithAux)


def param_bytes(params: Any) -> int:
    """Bytes the arrays of `params` hold (int8 kernels, their scales and the rest)."""
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(params))
