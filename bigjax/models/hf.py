"""Hugging Face checkpoints in: a transformers folder (config.json plus model.safetensors,
or a sharded model.safetensors.index.json) as a bigjax model config and params.

  --config.init_from.path=hf:FOLDER

The folder's config.json decides the architecture (`model_config`): the user's config names
only what the checkpoint cannot know (the head, num_classes, dropout). The tensors are
renamed (and linear weights transposed to Flax's [in, out]) into bigjax's parameter paths
(`convert`), then loaded through init_from's strict path-by-path table, so a new head is
reported as re-initialised and unused tensors are listed. Supported: GPT-2 (`gpt2`) and BERT
(`bert`). Safetensors are read with the `safetensors` library (numpy, no torch).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from bigjax.registry import ConfigError

PREFIX = "hf:"
SUPPORTED = ("gpt2", "bert")


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
  raise ConfigError(f'model_type "{kind}" is not supported; bigjax imports '
                    f"{', '.join(SUPPORTED)}.")


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


CONVERTERS = {"gpt2": (_gpt2, "transformer."), "bert": (_bert, "bert.")}


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
