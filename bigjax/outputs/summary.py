"""The depth and parameter report: what each layer holds and costs, without training.

  python run.py --config=configs/fashion_mnist.py:cnn --mode=summary   # one model, to files
  python -m bigjax.outputs.summary configs/fashion_mnist.py:mlp configs/fashion_mnist.py:cnn  # compare

Per layer: path, type, input and output shapes, trainable weights and biases, non-trainable
state (e.g. BatchNorm statistics) and forward FLOPs per example. Totals per layer type, and
the model's depth: the number of layers with weights (dense, conv, attention, embedding) on
the longest input-to-output path. Normalisation layers carry weights too, but are not
counted in the depth, by the usual convention (ResNet-20 has 20: 19 convs and the head).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LAYER_TYPES = {  # Flax/bigjax class name -> the report's layer type
    "Dense": "dense", "DenseGeneral": "dense", "Conv": "conv",
    "BatchNorm": "normalisation", "LayerNorm": "normalisation", "GroupNorm": "normalisation",
    "RMSNorm": "normalisation", "MultiHeadDotProductAttention": "attention",
    "MultiHeadAttention": "attention", "SelfAttention": "attention",
    "CausalSelfAttention": "attention", "Embed": "embedding",
    "MaxPool": "pooling", "AvgPool": "pooling", "Activation": "activation",
    "Flatten": "flatten", "Dropout": "dropout",
}
WEIGHT_TYPES = ("dense", "conv", "attention", "embedding")
EMPTY_TOTALS = {"layers": 0, "trainable": 0, "non_trainable": 0, "flops_per_example": 0}
DEPTH_DEFINITION = ("layers with weights (dense, conv, attention, embedding) on the longest "
                    "input-to-output path; normalisation and parameter-free layers not counted")


def _subtree(tree: Any, path: Sequence[str]) -> Any:
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return {}
    tree = tree[key]
  return tree


def _direct_leaves(tree: Any) -> dict[str, Any]:
  """The arrays held by a module itself (not by its children)."""
  return {k: v for k, v in tree.items() if not isinstance(v, dict)} if isinstance(tree, dict) \
      else {}


def _flat_leaves(tree: Any) -> dict[str, Any]:
  """Every array below a module, keyed 'child/name'."""
  flat = {}
  for key, value in (tree.items() if isinstance(tree, dict) else ()):
    if isinstance(value, dict):
      flat.update({f"{key}/{k}": v for k, v in _flat_leaves(value).items()})
    else:
      flat[key] = value
  return flat


def _concrete(leaves) -> bool:
  """Trained values (a run's checkpoint), not shapes: non-zero counts mean something."""
  leaves = list(leaves)
  return bool(leaves) and all(isinstance(v, (np.ndarray, jax.Array)) for v in leaves)


def _size(x) -> int:
  return int(np.prod(x.shape))


def _weights_and_biases(params: dict) -> dict:
  """Parameter counts of one layer: biases apart from everything else (kernels, scales...)."""
  biases = sum(_size(v) for k, v in params.items() if k.split("/")[-1] == "bias")
  weights = sum(_size(v) for k, v in params.items() if k.split("/")[-1] != "bias")
  return {"weights": weights, "biases": biases, "trainable": weights + biases}


def _flops(layer_type: str, params: dict, in_shape, out_shape) -> int:
  """Forward FLOPs for one example: a multiply-add counts 2, bias adds and elementwise ops 1."""
  out_elems = math.prod(out_shape[1:]) if out_shape else 0
  if layer_type in ("dense", "conv") and "kernel" in params:
    # Each output element is a dot product over the kernel's input axes (for a conv:
    # kh x kw x cin), then a bias add.
    per_output = math.prod(params["kernel"].shape[:-1])
    return 2 * per_output * out_elems + (out_elems if "bias" in params else 0)
  if layer_type == "attention" and in_shape and len(in_shape) == 3:
    # q, k, v and output projections (2 N D^2 each), scores and weighted sum (2 N^2 D each)
    n, d = in_shape[1], in_shape[2]
    return 4 * 2 * n * d * d + 2 * 2 * n * n * d
  if layer_type in ("activation", "normalisation"):
    return out_elems * (1 if layer_type == "activation" else 2)
  if layer_type == "pooling":
    return math.prod(in_shape[1:]) if in_shape else 0
  return 0  # flatten, dropout at inference; other layers are not estimated


def summarize(model: nn.Module, variables: dict, example_x: jax.Array) -> dict:
  """The report as a JSON-ready dict. Pure: shapes only (jax.eval_shape), no computation."""
  calls: list[dict] = []

  def record(next_fun, args, kwargs, context):
    # __call__ is a layer; an embedding's `attend` is a tied output head (its own FLOPs,
    # the embedding's parameters).
    if context.method_name not in ("__call__", "attend"):
      return next_fun(*args, **kwargs)
    row = {"module": context.module, "path": tuple(context.module.path),
           "method": context.method_name}
    calls.append(row)
    out = next_fun(*args, **kwargs)
    row["input"] = tuple(args[0].shape) if args and hasattr(args[0], "shape") else None
    row["output"] = tuple(out.shape) if hasattr(out, "shape") else None
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, example_x)

  paths = [c["path"] for c in calls if c["method"] == "__call__"]
  # Attention is reported as one layer, though Flax builds it from four DenseGenerals.
  whole = [c["path"] for c in calls
           if LAYER_TYPES.get(type(c["module"]).__name__) == "attention"]
  layers = []
  for call in calls:
    path = call["path"]
    cls = type(call["module"]).__name__
    if call["method"] == "attend":  # [..., D] @ embedding.T -> [..., V]
      features, out = call["input"][-1], call["output"]
      layers.append({
          "path": "/".join(path) + " (tied head)", "type": "dense", "class": f"{cls}.attend",
          "input_shape": list(call["input"][1:]), "output_shape": list(out[1:]),
          **_weights_and_biases({}), "non_trainable": 0, "in_depth": False,
          "flops_per_example": 2 * features * math.prod(out[1:])})
      continue
    layer_type = LAYER_TYPES.get(cls, cls.lower())
    if any(path[:len(w)] == w and path != w for w in whole):
      continue  # inside an attention layer
    if not path or (layer_type != "attention" and
                    any(p[:len(path)] == path and p != path for p in paths)):
      continue  # the model itself and other containers: their children are the layers
    own = _subtree(variables.get("params", {}), path)
    params = _flat_leaves(own) if layer_type == "attention" else _direct_leaves(own)
    state = {f"{collection}/{k}": v for collection, tree in variables.items()
             if collection != "params" for k, v in _direct_leaves(_subtree(tree, path)).items()}
    layers.append({
        "path": "/".join(path), "type": layer_type, "class": cls,
        "input_shape": list(call["input"][1:]) if call["input"] else None,
        "output_shape": list(call["output"][1:]) if call["output"] else None,
        **_weights_and_biases(params),
        "non_trainable": sum(_size(v) for v in state.values()),
        "flops_per_example": _flops(layer_type, params, call["input"], call["output"]),
        **({"nonzero": sum(int(np.count_nonzero(v)) for v in params.values())}
           if _concrete(params.values()) else {}),
    })

  top = _direct_leaves(variables.get("params", {}))  # e.g. a ViT's position embedding
  if top:
    layers.insert(0, {"path": "(top level) " + ", ".join(sorted(top)), "type": "embedding",
                      "class": type(model).__name__, "input_shape": None,
                      "output_shape": None, **_weights_and_biases(top), "non_trainable": 0,
                      "flops_per_example": 0, "in_depth": False})
  totals = {}
  for layer in layers:
    t = totals.setdefault(layer["type"], dict(EMPTY_TOTALS))
    t["layers"] += 1
    for key in ("trainable", "non_trainable", "flops_per_example"):
      t[key] += layer[key]
  trainable = sum(_size(x) for x in jax.tree.leaves(variables.get("params", {})))
  non_trainable = sum(_size(x) for c, tree in variables.items() if c != "params"
                      for x in jax.tree.leaves(tree))
  param_bytes = sum(_size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(variables))
  leaves = jax.tree.leaves(variables.get("params", {}))
  nonzero = sum(int(np.count_nonzero(x)) for x in leaves) if _concrete(leaves) else None
  depth = sum(1 for layer in layers if layer["type"] in WEIGHT_TYPES
              and layer.get("in_depth", True)
              and not layer["path"].split("/")[-1].startswith("shortcut"))
  return {
      "model": type(model).__name__, "input_shape": list(example_x.shape[1:]),
      "layers": layers, "by_type": totals, "blocks": _blocks(layers),
      "trainable_params": trainable, "non_trainable_params": non_trainable,
      "param_bytes": int(param_bytes), "depth": depth, "depth_definition": DEPTH_DEFINITION,
      "flops_per_example": sum(layer["flops_per_example"] for layer in layers),
      **({"nonzero_params": nonzero} if nonzero is not None else {}),
  }


def _blocks(layers: list[dict]) -> list[dict]:
  """Trainable parameters per layer type of each top-level module that holds several
  layers (a Transformer's or ResNet's blocks), in model order; [] for flat models."""
  groups: dict[str, list[dict]] = {}
  for layer in layers:
    parts = layer["path"].split("/")
    if len(parts) > 1:
      groups.setdefault(parts[0], []).append(layer)
  blocks = []
  for name, members in groups.items():
    by_type: dict[str, int] = {}
    for layer in members:
      if layer["trainable"]:  # parameter-free layers (activations, dropout) add nothing
        by_type[layer["type"]] = by_type.get(layer["type"], 0) + layer["trainable"]
    blocks.append({"block": name, "by_type": by_type,
                   "trainable": sum(layer["trainable"] for layer in members),
                   "flops_per_example": sum(layer["flops_per_example"] for layer in members)})
  return blocks if len(blocks) > 1 else []


def _shape(shape) -> str:
  return "x".join(map(str, shape)) if shape else "-"


def to_markdown(report: dict, title: str = "") -> str:
  lines = [f"## {title or report['model']}", "",
           f"Input {_shape(report['input_shape'])}; {report['trainable_params']:,} trainable "
           f"and {report['non_trainable_params']:,} non-trainable parameters "
           f"({report['param_bytes']:,} bytes); depth {report['depth']} "
           f"({report['depth_definition']}); {report['flops_per_example']:,} FLOPs per "
           "example (forward).", "",
           "| layer | type | input | output | weights | biases | non-trainable | FLOPs/example |"
           + (" non-zero |" if "nonzero_params" in report else ""),
           "|---|---|---|---|---|---|---|---|" + ("---|" if "nonzero_params" in report else "")]
  if "nonzero_params" in report:  # a trained run's params: what pruning left
    lines[2] += (f" Trained params (the run's checkpoint): {report['nonzero_params']:,} "
                 "non-zero.")
  for layer in report["layers"]:
    lines.append(f"| {layer['path']} | {layer['type']} | {_shape(layer['input_shape'])} | "
                 f"{_shape(layer['output_shape'])} | {layer['weights']:,} | "
                 f"{layer['biases']:,} | {layer['non_trainable']:,} | "
                 f"{layer['flops_per_example']:,} |"
                 + (f" {layer.get('nonzero', layer['weights'] + layer['biases']):,} |"
                    if "nonzero_params" in report else ""))
  lines += ["", "| layer type | layers | trainable | non-trainable | FLOPs/example |",
            "|---|---|---|---|---|"]
  order = list(WEIGHT_TYPES[:2]) + ["normalisation", "attention", "embedding"]
  order += sorted(t for t in report["by_type"] if t not in order)
  for layer_type in order:
    t = report["by_type"].get(layer_type, EMPTY_TOTALS)
    lines.append(f"| {layer_type} | {t['layers']} | {t['trainable']:,} | "
                 f"{t['non_trainable']:,} | {t['flops_per_example']:,} |")
  blocks = report.get("blocks") or []
  if blocks:  # e.g. a GPT block's attention, MLP (dense) and normalisation parameters
    types = [t for t in order if any(t in b["by_type"] for b in blocks)]
    lines += ["", "| block | " + " | ".join(types) + " | trainable | FLOPs/example |",
              "|---" * (len(types) + 3) + "|"]
    for b in blocks:
      lines.append(f"| {b['block']} | " + " | ".join(
          f"{b['by_type'].get(t, 0):,}" for t in types) +
          f" | {b['trainable']:,} | {b['flops_per_example']:,} |")
  return "\n".join(lines) + "\n"


def compare_markdown(reports: dict[str, dict]) -> str:
  """Several models side by side: one column per config."""
  names = list(reports)
  types = sorted({t for r in reports.values() for t in r["by_type"]
                  if t in WEIGHT_TYPES + ("normalisation",)})
  rows = [("trainable parameters", lambda r: f"{r['trainable_params']:,}")]
  rows += [(f"  in {t} layers", lambda r, t=t: f"{r['by_type'].get(t, {}).get('trainable', 0):,}")
           for t in types]
  rows += [("non-trainable parameters", lambda r: f"{r['non_trainable_params']:,}"),
           ("parameter bytes", lambda r: f"{r['param_bytes']:,}"),
           ("depth (weight layers)", lambda r: str(r["depth"])),
           ("FLOPs per example", lambda r: f"{r['flops_per_example']:,}")]
  lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for label, cell in rows:
    lines.append(f"| {label} | " + " | ".join(cell(reports[n]) for n in names) + " |")
  return "\n".join(lines) + "\n"


def _model_and_example(config):
  """The config's model and one input. The input's shape comes from the config and the
  dataset's metadata where they say enough (bigjax.data.spec), so nothing is downloaded or
  read; else from the data."""
  from bigjax import data as data_lib
  from bigjax.data import spec
  from bigjax.models import build_model
  example = spec.example_input(config.data)
  if example is None:
    example = data_lib.load(config.data).train.inputs[:1]
  return build_model(config.model), jnp.asarray(example)


def _shapes_of_init(model, example) -> dict:
  from bigjax.models import init_variables
  return jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), example))


def report_for_config(config) -> dict:
  """Builds the model and its variables' shapes from a config, without training."""
  model, example = _model_and_example(config)
  return summarize(model, _shapes_of_init(model, example), example)


def report_for_run(config, workdir: str) -> dict:
  """A trained run's report: its checkpoint's params, so each layer's non-zero count (what
  pruning left) is in it; a workdir without checkpoints (or of another model) gets
  report_for_config's."""
  from bigjax.training import checkpoint
  model, example = _model_and_example(config)
  expected = _shapes_of_init(model, example)
  if not checkpoint.list_steps(workdir):
    return summarize(model, expected, example)
  raw, _, _ = checkpoint.read(workdir)
  variables = {"params": raw["params"], **(raw.get("model_state") or {})}
  shapes = lambda tree: jax.tree.map(lambda x: tuple(np.shape(x)), tree)
  if shapes(expected.get("params", {})) != shapes(variables["params"]):
    import logging
    logging.getLogger("bigjax").warning(
        "%s holds a run of another model than this config's: the summary is of the config "
        "alone (no non-zero counts)", workdir)
    return summarize(model, expected, example)
  return summarize(model, variables, example)


def write(report: dict, workdir: str, title: str = "") -> str:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(report, f, indent=2)
  text = to_markdown(report, title)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(text)
  return text


def load_config_file(spec: str):
  """'configs/x.py[:arg]' -> the file's get_config(arg), as --config would load it."""
  import importlib.util
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No config file {path}.")
  module_spec = importlib.util.spec_from_file_location(
      "bigjax_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def main(argv: Sequence[str]) -> None:
  specs = [a for a in argv if not a.startswith("--")]
  if not specs:
    raise SystemExit("usage: python -m bigjax.outputs.summary CONFIG[:ARG] [CONFIG[:ARG] ...] "
                     "[--out=FILE.md]")
  sys.path.insert(0, os.getcwd())  # configs/ import each other as a package
  reports = {spec: report_for_config(load_config_file(spec)) for spec in specs}
  text = compare_markdown(reports)
  print(text)
  out = [a.split("=", 1)[1] for a in argv if a.startswith("--out=")]
  if out:
    with open(out[0], "w") as f:
      f.write(text)


if __name__ == "__main__":
  main(sys.argv[1:])
