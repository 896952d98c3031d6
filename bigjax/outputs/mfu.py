"""Model FLOPs utilisation for language models: the model's training FLOPs per token (from
its shape, not from a profiler) times tokens/s, over the device's peak."""

from __future__ import annotations

from typing import Any, Mapping

# Dense bfloat16 peak FLOP/s per device, by a substring of jax's device_kind (vendor
# figures; no sparsity). Devices not listed (CPUs included) get no MFU.
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
    "TPU v6 lite": 918e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5": 459e12,
    "TPU v4": 275e12, "TPU v3": 123e12, "TPU v2": 45e12,
}


def gpt_flops_per_token(model_config: Mapping[str, Any], seq_len: int) -> float:
  """Training FLOPs per token of a GPT (forward + backward = 3 x forward): 6 x the
  matmul weights (blocks and output head) plus the attention scores and weighted sums,
  12 x depth x width x seq_len (Kaplan et al. 2020; Chowdhery et al. 2022, appendix B)."""
  width, depth = model_config["hidden_size"], model_config["depth"]
  mlp = int(model_config.get("mlp_ratio", 4.0) * width)
  per_block = 3 * width * width + width * width + 2 * width * mlp  # qkv, out, mlp in/out
  head = width * model_config.get("vocab_size", 256)
  return 6.0 * (depth * per_block + head) + 12.0 * depth * width * seq_len


def peak_flops(device_kind: str) -> float | None:
  for name, flops in PEAK_BF16_FLOPS.items():
    if name.lower() in device_kind.lower():
      return flops
  return None


def utilisation(tokens_per_second: float, flops_per_token: float, device_kind: str,
                num_devices: int) -> float | None:
  """Achieved model FLOP/s over the devices' bf16 peak; None where the peak is unknown."""
  peak = peak_flops(device_kind)
  if peak is None or not tokens_per_second:
    return None
  return tokens_per_second * flops_per_token / (peak * num_devices)
