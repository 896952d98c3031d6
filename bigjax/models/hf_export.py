"""bigjax models out, as Hugging Face checkpoints: config.json and model.safetensors that
transformers' `AutoModelFor...from_pretrained(FOLDER)` loads.

  python run.py --mode=export --export_format=hf --workdir=runs/lm

A GPT with GPT-2's options (learned positions, LayerNorm, GELU MLP, biases, tied head)
becomes `GPT2LMHeadModel`; one with Llama's (RoPE, RMSNorm, SwiGLU, no biases) becomes
`LlamaForCausalLM`, or `Qwen2ForCausalLM` with q/k/v biases. A BERT becomes
`BertForSequenceClassification`, `BertForTokenClassification`, `BertForMaskedLM` or
`BertModel` by its head; a ViT `ViTForImageClassification` (with a
`preprocessor_config.json` holding the run's scaling and standardisation). Each is the exact
inverse of bigjax.models.hf's import (tested: export then import gives the same arrays back,
and the import is checked against transformers' own logits). Byte-level runs have no Hugging
Face tokenizer: transformers gets the weights, the caller feeds the ids the README gives.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from bigjax.finetuning.finetune import flatten
from bigjax.registry import ConfigError

BERT_ARCHITECTURES = {"classification": "BertForSequenceClassification",
                      "token_classification": "BertForTokenClassification",
                      "mlm": "BertForMaskedLM", "none": "BertModel"}


def _fields(module_class, model: Mapping[str, Any]) -> dict:
  """The model's fields: its module's defaults, overridden by what the config sets."""
  defaults = {f.name: f.default for f in dataclasses.fields(module_class)
              if f.default is not dataclasses.MISSING}
  return {**defaults, **{k: v for k, v in dict(model).items() if k in defaults or k == "name"}}


def _labels(num_classes: int, class_names) -> dict:
  names = list(class_names or []) or [f"LABEL_{i}" for i in range(num_classes)]
  if len(names) != num_classes:
    names = [f"LABEL_{i}" for i in range(num_classes)]
  return dict(id2label={str(i): n for i, n in enumerate(names)},
              label2id={n: i for i, n in enumerate(names)})


def hf_config_of(model: Mapping[str, Any], spec: Mapping[str, Any] | None = None) -> dict:
  """transformers' config.json for a bigjax model config (`spec`: the run's inference.json,
  for class names and, for a ViT, the image's shape)."""
  name = model.get("name")
  if name == "gpt":
    return _gpt_config(model)
  if name == "bert":
    return _bert_config(model, spec or {})
  if name == "vit":
    return _vit_config(model, spec or {})
  raise ConfigError(f'--export_format=hf writes GPT, BERT and ViT models (model.name="gpt", '
                    f'"bert" or "vit"); this run is "{name}". Use --export_format=jax '
                    "(the default) for it.")


def _gpt_config(model: Mapping[str, Any]) -> dict:
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


def _bert_config(model: Mapping[str, Any], spec: Mapping[str, Any]) -> dict:
  from bigjax.models.bert import BERT
  m = _fields(BERT, model)
  if m["pre_norm"]:
    raise ConfigError("This BERT is pre-LN (model.pre_norm=True); transformers' BERT is "
                      "post-LN, so it has no twin there. Export it with --export_format=jax.")
  if m["pooler"] and m["pool"] != "cls" and m["head"] in ("classification", "none"):
    raise ConfigError(f'This BERT pools "{m["pool"]}"; transformers\' BERT pools the first '
                      "([CLS]) token, so its classifier would read another vector. Train with "
                      "model.pool=cls to export to transformers, or use --export_format=jax.")
  config = dict(model_type="bert", architectures=[BERT_ARCHITECTURES[m["head"]]],
                vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
                num_hidden_layers=m["depth"], num_attention_heads=m["num_heads"],
                intermediate_size=m["intermediate_size"],
                max_position_embeddings=m["max_positions"],
                type_vocab_size=m["type_vocab_size"], layer_norm_eps=m["norm_epsilon"],
                hidden_act="gelu_new" if m["gelu_approximate"] else "gelu",
                hidden_dropout_prob=m["dropout_rate"],
                attention_probs_dropout_prob=m["dropout_rate"],
                pad_token_id=m["pad_token_id"], tie_word_embeddings=True,
                torch_dtype="float32")
  if m["head"] in ("classification", "token_classification"):
    config.update(_labels(spec.get("num_outputs") or m["num_classes"], spec.get("class_names")))
  return config


def _vit_config(model: Mapping[str, Any], spec: Mapping[str, Any]) -> dict:
  from bigjax.models.vit import ViT
  m = _fields(ViT, model)
  if m["pool"] != "cls":
    raise ConfigError(f'This ViT pools "{m["pool"]}"; transformers\' ViT classifies its class '
                      "token. Train with model.pool=cls to export to transformers, or use "
                      "--export_format=jax.")
  shape = spec.get("input_shape")
  if not shape or len(shape) != 3:
    raise ConfigError("A ViT export needs the run's image shape (inference.json's "
                      "input_shape); train the run again with this bigjax.")
  height, width, channels = shape
  return dict(model_type="vit", architectures=["ViTForImageClassification"],
              hidden_size=m["hidden_size"], num_hidden_layers=m["depth"],
              num_attention_heads=m["num_heads"],
              intermediate_size=int(m["mlp_ratio"] * m["hidden_size"]),
              hidden_act="gelu_new" if m["gelu_approximate"] else "gelu",
              layer_norm_eps=m["norm_epsilon"], image_size=height if height == width
              else [height, width], patch_size=m["patch_size"], num_channels=channels,
              qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
              torch_dtype="float32",
              **_labels(spec.get("num_outputs") or m["num_classes"], spec.get("class_names")))


def vit_preprocessor(spec: Mapping[str, Any]) -> dict:
  """ViTImageProcessor settings that prepare pixels as the run did: scaled by 1/pixel_max,
  then standardised by the run's statistics (if it standardised), at the trained size."""
  height, width, channels = spec["input_shape"]
  mean, std = spec.get("mean"), spec.get("std")
  per_channel = lambda v: [float(x) for x in np.broadcast_to(np.ravel(v), (channels,))]
  return dict(image_processor_type="ViTImageProcessor", do_resize=True,
              size={"height": height, "width": width}, resample=2, do_rescale=True,
              rescale_factor=1.0 / float(spec.get("pixel_max") or 255),
              do_normalize=mean is not None,
              image_mean=per_channel(mean) if mean is not None else [0.0] * channels,
              image_std=per_channel(std) if std is not None else [1.0] * channels)


def tensors_of(params: Any, model: Mapping[str, Any],
               spec: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """transformers' tensors (names and layouts) for a bigjax model's params."""
  return _tensors(params, hf_config_of(model, spec))


def _tensors(params: Any, hf_config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  p = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
  return {"gpt2": _gpt2_tensors, "llama": _llama_tensors, "qwen2": _llama_tensors,
          "bert": _bert_tensors, "vit": _vit_tensors}[hf_config["model_type"]](p, hf_config)


def _linear(out: dict, p: dict, hf_name: str, path: str, transpose: bool = True) -> None:
  out[hf_name + ".weight"] = np.ascontiguousarray(p[path + "/kernel"].T if transpose
                                                  else p[path + "/kernel"])
  if path + "/bias" in p:
    out[hf_name + ".bias"] = p[path + "/bias"]


def _norm(out: dict, p: dict, hf_name: str, path: str) -> None:
  out[hf_name + ".weight"] = p[path + "/scale"]
  out[hf_name + ".bias"] = p[path + "/bias"]


def _gpt2_tensors(p: dict, hf_config: dict) -> dict:
  out = {"transformer.wte.weight": p["token_embedding/embedding"],
         "transformer.wpe.weight": p["position_embedding"]}
  for i in range(hf_config["n_layer"]):
    h, b = f"transformer.h.{i}", f"block_{i}"
    _norm(out, p, f"{h}.ln_1", f"{b}/norm_0")
    _norm(out, p, f"{h}.ln_2", f"{b}/norm_1")
    # GPT-2's Conv1D keeps weights as [in, out], Flax's layout: no transpose.
    _linear(out, p, f"{h}.attn.c_attn", f"{b}/attention/qkv", transpose=False)
    _linear(out, p, f"{h}.attn.c_proj", f"{b}/attention/out", transpose=False)
    _linear(out, p, f"{h}.mlp.c_fc", f"{b}/mlp_in", transpose=False)
    _linear(out, p, f"{h}.mlp.c_proj", f"{b}/mlp_out", transpose=False)
  _norm(out, p, "transformer.ln_f", "final_norm")
  return out


def _llama_tensors(p: dict, hf_config: dict) -> dict:
  width, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
  head_dim, kv = width // heads, hf_config["num_key_value_heads"]
  splits = [heads * head_dim, (heads + kv) * head_dim]
  out = {"model.embed_tokens.weight": p["token_embedding/embedding"]}
  for i in range(hf_config["num_hidden_layers"]):
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
    _linear(out, p, f"{h}.self_attn.o_proj", f"{b}/attention/out")
    _linear(out, p, f"{h}.mlp.gate_proj", f"{b}/mlp_gate")
    _linear(out, p, f"{h}.mlp.up_proj", f"{b}/mlp_in")
    _linear(out, p, f"{h}.mlp.down_proj", f"{b}/mlp_out")
  out["model.norm.weight"] = p["final_norm/scale"]
  if not hf_config["tie_word_embeddings"]:
    out["lm_head.weight"] = np.ascontiguousarray(p["head/kernel"].T)
  return out


def _bert_tensors(p: dict, hf_config: dict) -> dict:
  architecture = hf_config["architectures"][0]
  base = "" if architecture == "BertModel" else "bert."  # task models nest the encoder
  out = {f"{base}embeddings.word_embeddings.weight": p["word_embeddings/embedding"],
         f"{base}embeddings.position_embeddings.weight": p["position_embeddings"],
         f"{base}embeddings.token_type_embeddings.weight": p["token_type_embeddings"]}
  _norm(out, p, f"{base}embeddings.LayerNorm", "embeddings_norm")
  for i in range(hf_config["num_hidden_layers"]):
    h, b = f"{base}encoder.layer.{i}", f"layer_{i}"
    for part in ("query", "key", "value"):
      _linear(out, p, f"{h}.attention.self.{part}", f"{b}/attention/{part}")
    _linear(out, p, f"{h}.attention.output.dense", f"{b}/attention/output")
    _norm(out, p, f"{h}.attention.output.LayerNorm", f"{b}/attention_norm")
    _linear(out, p, f"{h}.intermediate.dense", f"{b}/intermediate")
    _linear(out, p, f"{h}.output.dense", f"{b}/output")
    _norm(out, p, f"{h}.output.LayerNorm", f"{b}/output_norm")
  # The masked-LM and token-classification models have no pooler (transformers builds them
  # without one); a pooler a bigjax run trained alongside is left out there.
  if "pooler/kernel" in p and architecture in ("BertForSequenceClassification", "BertModel"):
    _linear(out, p, f"{base}pooler.dense", "pooler")
  if architecture in ("BertForSequenceClassification", "BertForTokenClassification"):
    _linear(out, p, "classifier", "classifier")
  if architecture == "BertForMaskedLM":  # the decoder is the word embedding, tied
    _linear(out, p, "cls.predictions.transform.dense", "mlm_transform")
    _norm(out, p, "cls.predictions.transform.LayerNorm", "mlm_norm")
    out["cls.predictions.bias"] = p["mlm_bias"]
  return out


def _vit_tensors(p: dict, hf_config: dict) -> dict:
  width = hf_config["hidden_size"]
  out = {"vit.embeddings.cls_token": p["class_token"],
         "vit.embeddings.position_embeddings": p["position_embedding"],
         # Flax's [kh, kw, in, out] to PyTorch's NCHW [out, in, kh, kw]
         "vit.embeddings.patch_embeddings.projection.weight": np.ascontiguousarray(
             p["patch_embedding/kernel"].transpose(3, 2, 0, 1)),
         "vit.embeddings.patch_embeddings.projection.bias": p["patch_embedding/bias"]}
  for i in range(hf_config["num_hidden_layers"]):
    h, b = f"vit.encoder.layer.{i}", f"block_{i}"
    _norm(out, p, f"{h}.layernorm_before", f"{b}/norm_0")
    _norm(out, p, f"{h}.layernorm_after", f"{b}/norm_1")
    for part in ("query", "key", "value"):  # Flax attention's [in, heads, head_dim]
      name = f"{h}.attention.attention.{part}"
      out[name + ".weight"] = np.ascontiguousarray(
          p[f"{b}/attention/{part}/kernel"].reshape(width, width).T)
      out[name + ".bias"] = p[f"{b}/attention/{part}/bias"].reshape(width)
    out[f"{h}.attention.output.dense.weight"] = np.ascontiguousarray(
        p[f"{b}/attention/out/kernel"].reshape(width, width).T)
    out[f"{h}.attention.output.dense.bias"] = p[f"{b}/attention/out/bias"]
    _linear(out, p, f"{h}.intermediate.dense", f"{b}/mlp/dense_0")
    _linear(out, p, f"{h}.output.dense", f"{b}/mlp/dense_1")
  _norm(out, p, "vit.layernorm", "final_norm")
  _linear(out, p, "classifier", "head")
  return out


def write(folder: str, params: Any, model: Mapping[str, Any],
          spec: Mapping[str, Any] | None = None) -> dict:
  """config.json and model.safetensors (and a ViT's preprocessor_config.json) into `folder`
  (which exists); returns the config written."""
  import json
  import os
  from safetensors.numpy import save_file
  hf_config = hf_config_of(model, spec)
  save_file(_tensors(params, hf_config), os.path.join(folder, "model.safetensors"),
            metadata={"format": "pt"})
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  if hf_config["model_type"] == "vit":
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
      json.dump(vit_preprocessor(spec), f, indent=2, sort_keys=True)
  return hf_config
