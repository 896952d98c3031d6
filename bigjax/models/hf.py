"""Hugging Face checkpoints in: a transformers folder (config.json plus model.safetensors,
or a sharded model.safetensors.index.json) as a bigjax model config and params.

  --config.init_from.path=hf:FOLDER

The folder's config.json decides the architecture (`model_config`): the user's config names
only what the checkpoint cannot know (the head, num_classes, dropout). The tensors are
renamed (and linear weights transposed to Flax's [in, out]) into bigjax's parameter paths
(`convert`), then loaded through init_from's strict path-by-path table, so a new head is
reported as re-initialised and unused tensors are listed. Supported: GPT-2 (`gpt2`), BERT
(`bert`), the Llama family (`llama`, `mistral`, `qwen2`: RoPE, RMSNorm, SwiGLU,
grouped-query attention) as bigjax's GPT with those options, and ViT (`vit`). Safetensors are read with the
`safetensors` library (numpy, no torch).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from bigjax.registry import ConfigError

PREFIX = "hf:"
SUPPORTED = ("gpt2", "bert", "llama", "mistral", "qwen2", "vit")
LLAMA_FAMILY = ("llama", "mistral", "qwen2")


def is_hf(path: str) -> bool:
  return str(path).startswith(PREFIX)


def folder_of(path: str) -> str:
  folder = os.path.expanduser(str(path)[len(PREFIX):] if is_hf(path) else str(path))
  if not os.path.isdir(folder):
    raise ConfigError(
        f"{path}: no such folder. Give hf:FOLDER, a folder holding a Hugging Face "
        "checkpoint (config.json and model.safetensors), e.g. one saved with "
        "save_pretrained or downloaded with `huggingface-cli download NAME --local-dir DIR` "
        "where there is network.")
  return folder


def read_config(path: str) -> dict:
  folder = folder_of(path)
  config_path = os.path.join(folder, "config.json")
  if not os.path.exists(config_path):
    raise ConfigError(f"{folder} has no config.json: it is not a Hugging Face checkpoint "
                      "folder (save_pretrained writes config.json beside the weights).")
  with open(config_path) as f:
    hf_config = json.load(f)
  model_type = hf_config.get("model_type")
  if model_type not in SUPPORTED:
    raise ConfigError(f'{config_path}: model_type "{model_type}" is not supported; bigjax '
                      f"imports {', '.join(SUPPORTED)}.")
  return hf_config


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint (one file or a sharded index), as numpy arrays."""
  from safetensors.numpy import load_file
  folder = folder_of(path)
  single = os.path.join(folder, "model.safetensors")
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(single):
    files = [single]
  elif os.path.exists(index):
    with open(index) as f:
      files = sorted({os.path.join(folder, name)
                      for name in json.load(f)["weight_map"].values()})
  else:
    raise ConfigError(f"{folder} has no model.safetensors (or model.safetensors.index.json): "
                      "save the model with save_pretrained(..., safe_serialization=True).")
  tensors: dict[str, np.ndarray] = {}
  for file in files:
    tensors.update(load_file(file))
  return tensors


# ------------------------------------------------------------------ architectures


def model_config(hf_config: Mapping[str, Any]) -> dict:
  """The bigjax config.model fields that the checkpoint decides."""
  kind = hf_config["model_type"]
  if kind == "gpt2":
    width = hf_config["n_embd"]
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
      raise ConfigError(f'GPT-2 checkpoint with activation "{activation}": bigjax supports '
                        "gelu_new (tanh) and gelu.")
    return dict(name="gpt", vocab_size=hf_config["vocab_size"],
                context_length=hf_config["n_positions"], hidden_size=width,
                depth=hf_config["n_layer"], num_heads=hf_config["n_head"],
                mlp_ratio=(hf_config.get("n_inner") or 4 * width) / width,
                positions="learned", norm="layer", tie_embeddings=True,
                norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-5),
                gelu_approximate=activation != "gelu")
  if kind == "bert":
    activation = hf_config.get("hidden_act", "gelu")
    if activation not in ("gelu", "gelu_new"):
      raise ConfigError(f'BERT checkpoint with hidden_act "{activation}": bigjax supports '
                        "gelu and gelu_new.")
    return dict(name="bert", vocab_size=hf_config["vocab_size"],
                hidden_size=hf_config["hidden_size"], depth=hf_config["num_hidden_layers"],
                num_heads=hf_config["num_attention_heads"],
                intermediate_size=hf_config["intermediate_size"],
                max_positions=hf_config["max_position_embeddings"],
                type_vocab_size=hf_config.get("type_vocab_size", 2),
                norm_epsilon=hf_config.get("layer_norm_eps", 1e-12),
                gelu_approximate=activation == "gelu_new",
                pad_token_id=hf_config.get("pad_token_id", 0) or 0)
  if kind in LLAMA_FAMILY:
    return _llama_config(hf_config)
  if kind == "vit":
    activation = hf_config.get("hidden_act", "gelu")
    if activation not in ("gelu", "gelu_new"):
      raise ConfigError(f'ViT checkpoint with hidden_act "{activation}": bigjax supports gelu '
                        "and gelu_new.")
    if not hf_config.get("qkv_bias", True):
      raise ConfigError("ViT checkpoint without q/k/v biases: bigjax's ViT has them.")
    width = hf_config["hidden_size"]
    return dict(name="vit", patch_size=hf_config["patch_size"], hidden_size=width,
                depth=hf_config["num_hidden_layers"],
                num_heads=hf_config["num_attention_heads"],
                mlp_ratio=hf_config["intermediate_size"] / width, pool="cls",
                norm_epsilon=hf_config.get("layer_norm_eps", 1e-12),
                gelu_approximate=activation == "gelu_new")
  raise ConfigError(f'model_type "{kind}" is not supported; bigjax imports '
                    f"{', '.join(SUPPORTED)}.")


def _llama_config(hf_config: Mapping[str, Any]) -> dict:
  kind, width = hf_config["model_type"], hf_config["hidden_size"]
  heads = hf_config["num_attention_heads"]
  rope = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise ConfigError(f'{kind} checkpoint with rope_type "{rope_type}" (RoPE scaling for long '
                      "contexts): bigjax implements the default RoPE only.")
  if hf_config.get("hidden_act", "silu") != "silu":
    raise ConfigError(f'{kind} checkpoint with hidden_act "{hf_config["hidden_act"]}": bigjax '
                      "supports SwiGLU with silu.")
  head_dim = hf_config.get("head_dim") or width // heads
  if head_dim * heads != width:
    raise ConfigError(f"{kind} checkpoint with head_dim {head_dim} x {heads} heads != hidden "
                      f"size {width}: bigjax's attention needs them equal.")
  if hf_config.get("mlp_bias") or (kind != "qwen2" and hf_config.get("attention_bias")):
    raise ConfigError(f"{kind} checkpoint with MLP or output-projection biases: bigjax "
                      "supports none (Llama, Mistral) or q/k/v biases only (Qwen2).")
  return dict(name="gpt", vocab_size=hf_config["vocab_size"],
              context_length=hf_config["max_position_embeddings"], hidden_size=width,
              depth=hf_config["num_hidden_layers"], num_heads=heads,
              num_kv_heads=hf_config.get("num_key_value_heads") or heads,
              mlp="swiglu", mlp_hidden=hf_config["intermediate_size"],
              positions="rope", norm="rms",
              rope_base=float(rope.get("rope_theta", hf_config.get("rope_theta", 10_000.0))),
              tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
              norm_epsilon=hf_config.get("rms_norm_eps", 1e-6),
              bias="qkv" if kind == "qwen2" or hf_config.get("attention_bias") else "none")


class _Tensors:
  """The checkpoint's tensors by name, remembering which were taken."""

  def __init__(self, tensors: Mapping[str, np.ndarray], prefix: str):
    # Task models keep the base model under a prefix ("transformer.", "bert.").
    self.names = {(name[len(prefix):] if name.startswith(prefix) else name): name
                  for name in tensors}
    self.tensors, self.taken = tensors, set()

  def __contains__(self, name: str) -> bool:
    return name in self.names

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self.names:
      raise ConfigError(f'The checkpoint lacks the tensor "{name}" that its config implies: '
                        "the weights do not match config.json.")
    self.taken.add(self.names[name])
    return np.asarray(self.tensors[self.names[name]])

  def linear(self, out: dict, path: str, name: str, transpose: bool = True) -> None:
    weight = self[name + ".weight"]
    out[path + "/kernel"] = weight.T if transpose else weight
    if name + ".bias" in self:
      out[path + "/bias"] = self[name + ".bias"]

  def norm(self, out: dict, path: str, name: str) -> None:
    old = name + ".gamma" in self  # checkpoints from TensorFlow conversions
    out[path + "/scale"] = self[name + (".gamma" if old else ".weight")]
    out[path + "/bias"] = self[name + (".beta" if old else ".bias")]


def _gpt2(t: _Tensors, hf_config) -> dict:
  out = {"token_embedding/embedding": t["wte.weight"], "position_embedding": t["wpe.weight"]}
  for i in range(hf_config["n_layer"]):
    h, b = f"h.{i}", f"block_{i}"
    t.norm(out, f"{b}/norm_0", f"{h}.ln_1")
    t.norm(out, f"{b}/norm_1", f"{h}.ln_2")
    # GPT-2's Conv1D keeps weights as [in, out], Flax's layout: no transpose. Its c_attn
    # output is [q | k | v], each split into heads, as bigjax's qkv.
    t.linear(out, f"{b}/attention/qkv", f"{h}.attn.c_attn", transpose=False)
    t.linear(out, f"{b}/attention/out", f"{h}.attn.c_proj", transpose=False)
    t.linear(out, f"{b}/mlp_in", f"{h}.mlp.c_fc", transpose=False)
    t.linear(out, f"{b}/mlp_out", f"{h}.mlp.c_proj", transpose=False)
  t.norm(out, "final_norm", "ln_f")
  t.taken.update(n for n in t.tensors if n == "lm_head.weight")  # tied to wte
  return out


def _bert(t: _Tensors, hf_config) -> dict:
  out = {"word_embeddings/embedding": t["embeddings.word_embeddings.weight"],
         "position_embeddings": t["embeddings.position_embeddings.weight"],
         "token_type_embeddings": t["embeddings.token_type_embeddings.weight"]}
  t.norm(out, "embeddings_norm", "embeddings.LayerNorm")
  for i in range(hf_config["num_hidden_layers"]):
    h, b = f"encoder.layer.{i}", f"layer_{i}"
    for part in ("query", "key", "value"):
      t.linear(out, f"{b}/attention/{part}", f"{h}.attention.self.{part}")
    t.linear(out, f"{b}/attention/output", f"{h}.attention.output.dense")
    t.norm(out, f"{b}/attention_norm", f"{h}.attention.output.LayerNorm")
    t.linear(out, f"{b}/intermediate", f"{h}.intermediate.dense")
    t.linear(out, f"{b}/output", f"{h}.output.dense")
    t.norm(out, f"{b}/output_norm", f"{h}.output.LayerNorm")
  if "pooler.dense.weight" in t:
    t.linear(out, "pooler", "pooler.dense")
  if "classifier.weight" in t:
    t.linear(out, "classifier", "classifier")
  if "cls.predictions.transform.dense.weight" in t:
    t.linear(out, "mlm_transform", "cls.predictions.transform.dense")
    t.norm(out, "mlm_norm", "cls.predictions.transform.LayerNorm")
    out["mlm_bias"] = t["cls.predictions.bias"]
    for tied in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
      if tied in t:  # the token embedding transposed, and the same bias
        t[tied]
  return out


def _llama(t: _Tensors, hf_config) -> dict:
  """Llama, Mistral, Qwen2: separate q, k, v projections joined into bigjax's one qkv (their
  rotary convention, rotate-half, is bigjax's)."""
  out = {"token_embedding/embedding": t["embed_tokens.weight"]}
  for i in range(hf_config["num_hidden_layers"]):
    h, b = f"layers.{i}", f"block_{i}"
    out[f"{b}/norm_0/scale"] = t[f"{h}.input_layernorm.weight"]
    out[f"{b}/norm_1/scale"] = t[f"{h}.post_attention_layernorm.weight"]
    parts = [f"{h}.self_attn.{p}_proj" for p in ("q", "k", "v")]
    out[f"{b}/attention/qkv/kernel"] = np.concatenate([t[p + ".weight"].T for p in parts], 1)
    if parts[0] + ".bias" in t:
      out[f"{b}/attention/qkv/bias"] = np.concatenate([t[p + ".bias"] for p in parts])
    t.linear(out, f"{b}/attention/out", f"{h}.self_attn.o_proj")
    t.linear(out, f"{b}/mlp_gate", f"{h}.mlp.gate_proj")
    t.linear(out, f"{b}/mlp_in", f"{h}.mlp.up_proj")
    t.linear(out, f"{b}/mlp_out", f"{h}.mlp.down_proj")
  out["final_norm/scale"] = t["norm.weight"]
  if hf_config.get("tie_word_embeddings", False):
    t.taken.update(n for n in t.tensors if n == "lm_head.weight")  # tied to embed_tokens
  else:
    out["head/kernel"] = t["lm_head.weight"].T
  return out


def _vit(t: _Tensors, hf_config) -> dict:
  """ViTForImageClassification (or ViTModel): NCHW conv and [out, in] linears to Flax's
  layouts; q, k, v and the output projection into Flax attention's [in, heads, head_dim]."""
  width, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
  head_dim = width // heads
  out = {"class_token": t["embeddings.cls_token"],
         "position_embedding": t["embeddings.position_embeddings"],
         "patch_embedding/kernel": t["embeddings.patch_embeddings.projection.weight"].transpose(
             2, 3, 1, 0),
         "patch_embedding/bias": t["embeddings.patch_embeddings.projection.bias"]}
  for i in range(hf_config["num_hidden_layers"]):
    h, b = f"encoder.layer.{i}", f"block_{i}"
    t.norm(out, f"{b}/norm_0", f"{h}.layernorm_before")
    t.norm(out, f"{b}/norm_1", f"{h}.layernorm_after")
    for part in ("query", "key", "value"):
      name = f"{h}.attention.attention.{part}"
      out[f"{b}/attention/{part}/kernel"] = t[name + ".weight"].T.reshape(width, heads,
                                                                           head_dim)
      out[f"{b}/attention/{part}/bias"] = t[name + ".bias"].reshape(heads, head_dim)
    out[f"{b}/attention/out/kernel"] = t[f"{h}.attention.output.dense.weight"].T.reshape(
        heads, head_dim, width)
    out[f"{b}/attention/out/bias"] = t[f"{h}.attention.output.dense.bias"]
    t.linear(out, f"{b}/mlp/dense_0", f"{h}.intermediate.dense")
    t.linear(out, f"{b}/mlp/dense_1", f"{h}.output.dense")
  t.norm(out, "final_norm", "layernorm")
  if "classifier.weight" in t:
    t.linear(out, "head", "classifier")
  return out


CONVERTERS = {"gpt2": (_gpt2, "transformer."), "bert": (_bert, "bert."),
              "vit": (_vit, "vit."),
              **{kind: (_llama, "model.") for kind in LLAMA_FAMILY}}


def convert(tensors: Mapping[str, np.ndarray], hf_config: Mapping[str, Any]) -> dict:
  """{bigjax '/'-joined param path: array} of a checkpoint's tensors. Tensors that have no
  place in bigjax's model are kept as "unused:<name>", so the load table lists them."""
  converter, prefix = CONVERTERS[hf_config["model_type"]]
  reader = _Tensors(tensors, prefix)
  out = converter(reader, hf_config)
  for name in tensors:
    if name not in reader.taken and not name.endswith("position_ids"):  # (a buffer)
      out[f"unused:{name}"] = np.asarray(tensors[name])
  return out
