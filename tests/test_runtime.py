"""The notebook's layout choice for the runtime it finds (fake devices; nothing compiled)."""

import dataclasses

import jax

from configs import tiny
from harmony_jax.runtime import GiB, choose_layout, device_memory, weight_count


@dataclasses.dataclass
class _Device:
    platform: str
    limit: int | None
    device_kind: str = "fake"

    def memory_stats(self):
        return None if self.limit is None else {"bytes_limit": self.limit}


def test_layout_for_cpu_gpu_and_tpu():
    config = tiny.get_config()
    weights = params, text = weight_count(config)
    assert params > 10_000 and text == 0  # the tiny model's text encoder is trained with it
    cpu = choose_layout(config, jax.devices()[:1], weights)
    assert (cpu.mesh, cpu.dtype, cpu.quantize) == (None, "float32", "none")
    assert device_memory(jax.devices()[0]) is None and "1 CPU device" in cpu.why
    roomy = choose_layout(config, [_Device("gpu", 80 * GiB)], weights)
    assert (roomy.dtype, roomy.quantize) == ("bfloat16", "none") and "80.0 GiB" in roomy.why
    # bfloat16 weights need 2 bytes a parameter, int8 about 1: a device with room for 1.5
    small = choose_layout(config, [_Device("gpu", int(1.5 * params / 0.6))], weights)
    assert (small.dtype, small.quantize) == ("bfloat16", "int8") and "over" not in small.why
    # eight such devices share the bfloat16 weights over fsdp
    pod = choose_layout(config, [_Device("tpu", int(1.5 * params / 0.6))] * 8, weights)
    assert pod.quantize == "none" and "8 TPU devices" in pod.why
    tight = choose_layout(config, [_Device("gpu", params // 2)], weights)
    assert tight.quantize == "int8" and "plan --mode sample" in tight.why
    unknown = choose_layout(config, [_Device("gpu", None)], weights)
    assert unknown.dtype == "bfloat16" and "memory unknown" in unknown.why
