"""`--mode=export`: a trained run as files that run without bigjax.

    WORKDIR/export/
      model.jax      serialized StableHLO (jax.export), any batch size; needs jax alone
      model.onnx     the same function as ONNX (jax2onnx), checked in onnxruntime
      inference.json inputs (shape, dtype, scaling, standardisation) and class names
      predict.py     loads model.jax and predicts on image files (numpy, PIL, jax)
      README.md      how to call each

The params are constants inside both programs. The folder is written under a temporary name
and renamed when complete, so an export never leaves half a folder.
"""

from __future__ import annotations

import contextlib
import json
import logging as py_logging
import os
import re
import shutil

import jax
import numpy as np

from bigjax.inference import portable
from bigjax.registry import ConfigError

logging = py_logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4  # max |onnxruntime - jax| output difference accepted (float32 rounding)

PREDICT_PY = '''"""Predicts classes of image files with the exported model: needs numpy, Pillow and jax.

    python predict.py IMAGE [IMAGE ...]
"""
import json, os, sys

import jax
import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
spec = json.load(open(os.path.join(HERE, "inference.json")))
with open(os.path.join(HERE, "model.jax"), "rb") as f:
  model = jax.export.deserialize(bytearray(f.read()))


def prepare(path):
  height, width, channels = spec["input_shape"]
  image = Image.open(path).convert("L" if channels == 1 else "RGB")
  pixels = np.asarray(image.resize((width, height), Image.BILINEAR), np.float32) / 255.0
  pixels = pixels.reshape(height, width, channels)
  if "mean" in spec:
    pixels = (pixels - np.float32(spec["mean"])) / np.float32(spec["std"])
  return pixels


if __name__ == "__main__":
  images = np.stack([prepare(p) for p in sys.argv[1:]])
  probabilities = np.asarray(jax.nn.softmax(model.call(images), axis=-1))
  for path, p in zip(sys.argv[1:], probabilities):
    print(f"{path}: {spec['class_names'][p.argmax()]} ({100 * p.max():.1f}%)")
'''

README = """# An exported bigjax model

From `{workdir}` at step {step}: {task} of inputs shaped {shape} ({dtype}) into {outputs}
outputs{classes}.

Inputs are prepared as the run prepared its data (`inference.json`): images scaled to [0, 1]
(pixel / 255){standardise}. The models return the network's raw outputs (logits);
softmax gives class probabilities.

## model.jax: StableHLO, with jax alone

```python
import jax, numpy as np
model = jax.export.deserialize(bytearray(open("model.jax", "rb").read()))
logits = model.call(images)  # images: {dtype} [N, {shape_text}], any N
```

`python predict.py IMAGE ...` does it for image files.

## model.onnx: ONNX{onnx_note}

```python
import onnxruntime as ort
session = ort.InferenceSession("model.onnx")
logits = session.run(None, {{session.get_inputs()[0].name: images}})[0]
```
"""


@contextlib.contextmanager
def _folder_replaced_whole(out_dir: str):
  """Yields a temporary folder beside `out_dir` to write into; when the block ends, it
  replaces `out_dir` (an old export is removed only then); on an error it is deleted."""
  partial = f"{out_dir}.partial-{os.getpid()}"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    yield partial
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
  finally:
    shutil.rmtree(partial, ignore_errors=True)


def export(config, workdir: str, step: str | int = "latest", out_dir: str | None = None,
           onnx: bool = True, quantize: str | None = None,
           calibration_examples: int = 512) -> str:
  """Writes the export folder (default WORKDIR/export); returns its path. With `quantize`
  (bigjax.compression.quantization's modes) the model is int8 inside both files."""
  predictor = portable.load(workdir, config, step)
  if quantize:
    from bigjax.compression import quantization
    quantization.rules(quantize)
    calibration = None
    if quantize == "static":  # needs the training data, for the activation scales
      from bigjax.training.programs import Programs
      from bigjax.training.programs import with_kept_tokenizer
      calibration = quantization.calibration_inputs(
          Programs(with_kept_tokenizer(config, workdir)), calibration_examples)
    predictor, _ = quantization.quantize(predictor, quantize, calibration)
  return write_folder(predictor, workdir, out_dir or os.path.join(workdir, "export"), onnx)


def write_folder(predictor: portable.Predictor, workdir: str, out_dir: str,
                 onnx: bool = True) -> str:
  """The export folder of a (possibly quantized) predictor of `workdir`'s run."""
  spec = predictor.spec
  out_dir = os.path.abspath(out_dir)
  with _folder_replaced_whole(out_dir) as partial:
    function = _function(predictor)
    with open(os.path.join(partial, "model.jax"), "wb") as f:
      f.write(stablehlo(function, spec))
    onnx_note = " (not written: " + _onnx_missing() + ")" if onnx and _onnx_missing() else ""
    if onnx and spec.get("quantized"):  # jax2onnx's Flax handlers take float params only
      onnx_note = (" (not written: jax2onnx cannot convert qwix's int8 layers; export without "
                   "--quantize for ONNX)")
    elif onnx and not onnx_note:
      difference = write_onnx(function, spec, os.path.join(partial, "model.onnx"))
      onnx_note = f" (checked in onnxruntime: outputs within {difference:.1e} of jax)"
    elif not onnx:
      onnx_note = " (not written: --onnx=False)"
    with open(os.path.join(partial, "inference.json"), "w") as f:
      json.dump({**spec, "step": predictor.step}, f, indent=2, sort_keys=True)
    if spec["task"] == "classification" and len(spec["input_shape"]) == 3:
      with open(os.path.join(partial, "predict.py"), "w") as f:
        f.write(PREDICT_PY)
    with open(os.path.join(partial, "README.md"), "w") as f:
      f.write(_readme(workdir, predictor, onnx_note))
  logging.info("exported step %d to %s (%s)", predictor.step, out_dir,
               ", ".join(sorted(os.listdir(out_dir))))
  return out_dir


HF_README = """# A bigjax run as a Hugging Face checkpoint

From `{workdir}` at step {step}: {architecture}, {params:,} parameters.

```python
import transformers
model = transformers.{auto}.from_pretrained("{folder}")
{call}
```
{inputs}"""

HF_CALLS = {
    "AutoModelForCausalLM": "logits = model(input_ids).logits",
    "AutoModelForMaskedLM": "logits = model(input_ids, attention_mask=attention_mask).logits",
    "AutoModelForSequenceClassification":
        "logits = model(input_ids, attention_mask=attention_mask).logits  # [batch, classes]",
    "AutoModelForTokenClassification":
        "logits = model(input_ids, attention_mask=attention_mask).logits  # [batch, len, classes]",
    "AutoModel": "hidden = model(input_ids, attention_mask=attention_mask).last_hidden_state",
    "AutoModelForImageClassification":
        "pixels = transformers.AutoImageProcessor.from_pretrained(\"{folder}\")(images, "
        "return_tensors=\"pt\").pixel_values\nlogits = model(pixels).logits",
}


def _auto_class(architecture: str) -> str:
  for suffix, auto in (("CausalLM", "AutoModelForCausalLM"), ("MaskedLM", "AutoModelForMaskedLM"),
                       ("SequenceClassification", "AutoModelForSequenceClassification"),
                       ("TokenClassification", "AutoModelForTokenClassification"),
                       ("ImageClassification", "AutoModelForImageClassification")):
    if architecture.endswith(suffix):
      return auto
  return "AutoModel"


def _hf_inputs(model, has_tokenizer: bool) -> str:
  """How to make the model's inputs, as the run made them."""
  if model.get("name") == "vit":
    return ("\npreprocessor_config.json prepares images as the run did (its size, scaling by "
            "1/pixel_max, its standardisation).\n")
  if has_tokenizer:
    return ("\ntokenizer.json is the run's tokenizer: `transformers.PreTrainedTokenizerFast("
            "tokenizer_file=\"tokenizer.json\")`.\n")
  if model.get("name") == "bert":
    return ("\nThe run's tokens are UTF-8 bytes shifted by 4 after [PAD]=0, [CLS]=1, [SEP]=2, "
            "[MASK]=3: `[1] + [b + 4 for b in text.encode()] + [2]`, padded with 0, and "
            "`attention_mask` 1 on the tokens, 0 on the padding.\n")
  return ("\nThe run's tokens are UTF-8 bytes (ids 0-255): no tokenizer; feed "
          "`list(text.encode())`.\n")


def export_hf(config, workdir: str, step: str | int = "latest",
              out_dir: str | None = None) -> str:
  """`--export_format=hf`: config.json and model.safetensors for transformers (GPT-2, Llama,
  Qwen2, BERT or ViT; bigjax.models.hf_export), written atomically. LoRA adapters are merged
  into the weights they adapt."""
  from bigjax.finetuning import lora
  from bigjax.models import hf_export
  from bigjax.training import checkpoint
  spec = (portable.read_spec(workdir)
          if os.path.exists(os.path.join(workdir, portable.SPEC_FILE)) else {})
  hf_config = hf_export.hf_config_of(config.model, spec)  # (no HF twin: fails first)
  out_dir = os.path.abspath(out_dir or os.path.join(workdir, "export_hf"))
  checkpoint.require(workdir, step)
  raw, _, chosen = checkpoint.read(os.path.abspath(workdir), step)
  params = raw["params"]
  if lora.is_lora(params):
    params = lora.merge(params, config.lora.alpha / config.lora.rank)
  architecture = hf_config["architectures"][0]
  with _folder_replaced_whole(out_dir) as partial:
    hf_export.write(partial, params, config.model, spec)
    count = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    saved_tokenizer = os.path.join(workdir, "tokenizer.json")
    if os.path.exists(saved_tokenizer):  # the run's own (bpe:N or a given tokenizer.json)
      shutil.copy(saved_tokenizer, os.path.join(partial, "tokenizer.json"))
    auto = _auto_class(architecture)
    with open(os.path.join(partial, "README.md"), "w") as f:
      f.write(HF_README.format(
          workdir=os.path.abspath(workdir), step=chosen, architecture=architecture,
          params=count, folder=out_dir, auto=auto, call=HF_CALLS[auto].format(folder=out_dir),
          inputs=_hf_inputs(config.model, os.path.exists(saved_tokenizer))))
  logging.info("exported step %d as %s to %s", chosen, architecture, out_dir)
  return out_dir


def _function(predictor: portable.Predictor):
  """inputs -> outputs with the params as constants (float32 outputs)."""
  variables = predictor.variables
  return lambda inputs: predictor.apply(variables, inputs).astype(np.float32)


def _input_spec(spec: dict, batch) -> jax.ShapeDtypeStruct:
  if not spec.get("input_shape"):
    raise ConfigError("This run's inference.json has no input shape; export needs one. Train "
                      "the run again with this bigjax.")
  return jax.ShapeDtypeStruct((batch, *spec["input_shape"]), spec["input_dtype"])


def stablehlo(function, spec: dict) -> bytes:
  """The function serialized by jax.export, polymorphic in the batch size."""
  (batch,) = jax.export.symbolic_shape("batch")
  exported = jax.export.export(jax.jit(function))(_input_spec(spec, batch))
  return bytes(exported.serialize())


def _onnx_missing() -> str | None:
  for module in ("jax2onnx", "onnxruntime"):
    try:
      __import__(module)
    except ImportError:
      return f"{module} is not installed; pip install 'bigjax[export]'"
  return None


def write_onnx(function, spec: dict, path: str, check_batch: int = 3) -> float:
  """ONNX through jax2onnx, then run in onnxruntime against jax on random inputs; returns
  the largest output difference. An op jax2onnx cannot convert is named in one line."""
  import jax2onnx
  import onnxruntime
  shape = spec["input_shape"]
  py_logging.getLogger("onnx_ir").setLevel(py_logging.ERROR)  # (notes on unused shapes)
  try:
    jax2onnx.to_onnx(function, [jax.ShapeDtypeStruct(("B", *shape), spec["input_dtype"])],
                     model_name="bigjax", return_mode="file", output_path=path)
  except Exception as e:  # noqa: BLE001 -- jax2onnx raises many kinds for an unsupported op
    op = re.search(r"primitive[s]?\W+'?(\w+)", str(e), flags=re.IGNORECASE)
    raise ConfigError(
        f"ONNX export failed: jax2onnx cannot convert "
        f"{('the op ' + op.group(1)) if op else 'this model'} ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200]}). model.jax (StableHLO) exports every op; pass "
        "--onnx=False to write it alone.") from e
  rng = np.random.default_rng(0)
  if np.issubdtype(np.dtype(spec["input_dtype"]), np.integer):
    inputs = rng.integers(0, 2, (check_batch, *shape)).astype(spec["input_dtype"])
  else:
    inputs = rng.random((check_batch, *shape), np.float32).astype(spec["input_dtype"])
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  got = session.run(None, {session.get_inputs()[0].name: inputs})[0]
  want = np.asarray(jax.jit(function)(inputs))
  difference = float(np.max(np.abs(got - want)))
  scale = max(1.0, float(np.max(np.abs(want))))
  if not difference <= ONNX_TOLERANCE * scale:
    raise ConfigError(f"The ONNX model's outputs differ from jax's by {difference:.3g} (more "
                      f"than {ONNX_TOLERANCE * scale:.1g}): not written. Pass "
                      "--onnx=False to export model.jax alone.")
  return difference


def _readme(workdir: str, predictor: portable.Predictor, onnx_note: str) -> str:
  spec = predictor.spec
  names = spec.get("class_names") or []
  return README.format(
      workdir=os.path.abspath(workdir), step=predictor.step, task=spec["task"],
      shape=tuple(spec["input_shape"]), dtype=spec["input_dtype"],
      shape_text=", ".join(map(str, spec["input_shape"])), outputs=spec["num_outputs"],
      classes=(f" (classes: {', '.join(names[:20])}{', ...' if len(names) > 20 else ''})"
               if names else ""),
      standardise=(", then standardised per channel with `mean` and `std`"
                   if "mean" in spec else ""),
      onnx_note=onnx_note)
