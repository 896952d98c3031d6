"""bigjax language models out, as Hugging Face checkpoints: config.json and model.safetensors
that transformers' `AutoModelForCausalLM.from_pretrained(FOLDER)` loads.

  python run.py --mode=export --export_format=hf --workdir=runs/lm

A GPT with GPT-2's options (learned positions, LayerNorm, GELU MLP, biases, tied head)
becomes `GPT2LMHeadModel`; one with Llama's (RoPE, RMSNorm, SwiGLU, no biases) becomes
`LlamaForCausalLM`, or `Qwen2ForCausalLM` with q/k/v biases. Each is the exact inverse of
bigjax.models.hf's import (tested: export then import gives the same arrays back, and the
import is checked against transformers' own logits). Byte-level runs (vocab 256) have no
Hugging Face tokenizer: transformers gets the weights, the caller feeds byte ids.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from bigjax.finetuning.finetune import flatten
from bigjax.registry import ConfigError


def hf_config_of(model: Mapping[str, Any]) -> dict:
  """transformers' config.json for a bigjax GPT config."""
  if model.get("name") != "gpt":
    raise ConfigError(f'--export_format=hf writes language models (model.name="gpt"); this '
                      f'run is "{model.get("name")}".')
  width, heads = model["hidden_size"], model["num_heads"]
  hidden = model.get("mlp_hidden") or int(model.get("mlp_ratio", 4.0) * width)
  options = (model.get("positions", "learned"), model.get("norm", "layer"),
             model.get("mlp", "gelu"), model.get("bias", "all"))
  common = dict(vocab_size=model["vocab_size"], torch_dtype="float32", bos_token_id=None,
                eos_token_id=None,  # (bigjax's runs name no special tokens)
                tie_word_embeddings=bool(model.get("tie_embeddings", True)))
  if options == ("learned", "layer", "gelu", "all") and common["tie_word_embeddings"]:
    return dict(common, model_type="gpt2", architectures=["GPT2LMHeadModel"],
                n_positions=model["context_length"], n_embd=width, n_layer=model["depth"],
                n_head=heads, n_inner=hidden,
                layer_norm_epsilon=model.get("norm_epsilon", 1e-6),
                activation_function=("gelu_new" if model.get("gelu_approximate", True)
                                     else "gelu"),
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  if options[:3] == ("rope", "rms", "swiglu") and options[3] in ("none", "qkv"):
    kind = "qwen2" if options[3] == "qkv" else "llama"
    return dict(common, model_type=kind,
                architectures=["Qwen2ForCausalLM" if kind == "qwen2" else "LlamaForCausalLM"],
                hidden_size=width, intermediate_size=hidden, num_hidden_layers=model["depth"],
                num_attention_heads=heads,
                num_key_value_heads=model.get("num_kv_heads") or heads,
                max_position_embeddings=model["context_length"],
                rms_norm_eps=model.get("norm_epsilon", 1e-6),
                rope_theta=float(model.get("rope_base", 10_000.0)), hidden_act="silu",
                attention_bias=False, mlp_bias=False, head_dim=width // heads)
  raise ConfigError(
      f"This GPT (positions={options[0]}, norm={options[1]}, mlp={options[2]}, bias="
      f"{options[3]}, tie_embeddings={common['tie_word_embeddings']}) matches no transformers "
      "architecture: GPT-2 is learned/layer/gelu/all with a tied head, Llama rope/rms/swiglu/"
      "none, Qwen2 rope/rms/swiglu/qkv.")


def tensors_of(params: Any, model: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """transformers' tensors (names and layouts) for a bigjax GPT's params."""
  hf_config = hf_config_of(model)
  p = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
  out: dict[str, np.ndarray] = {}
  depth = hf_config.get("n_layer") or hf_config["num_hidden_layers"]

  def linear(hf_name: str, path: str, transpose: bool = True) -> None:
    out[hf_name + ".weight"] = np.ascontiguousarray(p[path + "/kernel"].T if transpose
                                                    else p[path + "/kernel"])
    if path + "/bias" in p:
      out[hf_name + ".bias"] = p[path + "/bias"]

  if hf_config["model_type"] == "gpt2":
    out["transformer.wte.weight"] = p["token_embedding/embedding"]
    out["transformer.wpe.weight"] = p["position_embedding"]
    for i in range(depth):
      h, b = f"transformer.h.{i}", f"block_{i}"
      for hf_norm, norm in (("ln_1", "norm_0"), ("ln_2", "norm_1")):
        out[f"{h}.{hf_norm}.weight"] = p[f"{b}/{norm}/scale"]
        out[f"{h}.{hf_norm}.bias"] = p[f"{b}/{norm}/bias"]
      linear(f"{h}.attn.c_attn", f"{b}/attention/qkv", transpose=False)  # Conv1D: [in, out]
      linear(f"{h}.attn.c_proj", f"{b}/attention/out", transpose=False)
      linear(f"{h}.mlp.c_fc", f"{b}/mlp_in", transpose=False)
      linear(f"{h}.mlp.c_proj", f"{b}/mlp_out", transpose=False)
    out["transformer.ln_f.weight"] = p["final_norm/scale"]
    out["transformer.ln_f.bias"] = p["final_norm/bias"]
    return out
  width, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
  head_dim, kv = width // heads, hf_config["num_key_value_heads"]
  splits = [heads * head_dim, (heads + kv) * head_dim]
  out["model.embed_tokens.weight"] = p["token_embedding/embedding"]
  for i in range(depth):
    h, b = f"model.layers.{i}", f"block_{i}"
    out[f"{h}.input_layernorm.weight"] = p[f"{b}/norm_0/scale"]
    out[f"{h}.post_attention_layernorm.weight"] = p[f"{b}/norm_1/scale"]
    kernels = np.split(p[f"{b}/attention/qkv/kernel"], splits, axis=1)
    biases = (np.split(p[f"{b}/attention/qkv/bias"], splits)
              if f"{b}/attention/qkv/bias" in p else None)
    for j, part in enumerate(("q", "k", "v")):
      out[f"{h}.self_attn.{part}_proj.weight"] = np.ascontiguousarray(kernels[j].T)
      if biases is not None:
        out[f"{h}.self_attn.{part}_proj.bias"] = biases[j]
    linear(f"{h}.self_attn.o_proj", f"{b}/attention/out")
    linear(f"{h}.mlp.gate_proj", f"{b}/mlp_gate")
    linear(f"{h}.mlp.up_proj", f"{b}/mlp_in")
    linear(f"{h}.mlp.down_proj", f"{b}/mlp_out")
  out["model.norm.weight"] = p["final_norm/scale"]
  if not hf_config["tie_word_embeddings"]:
    out["lm_head.weight"] = np.ascontiguousarray(p["head/kernel"].T)
  return out


def write(folder: str, params: Any, model: Mapping[str, Any]) -> None:
  """config.json and model.safetensors into `folder` (which exists)."""
  import json
  import os
  from safetensors.numpy import save_file
  hf_config = hf_config_of(model)
  save_file(tensors_of(params, model), os.path.join(folder, "model.safetensors"),
            metadata={"format": "pt"})
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
