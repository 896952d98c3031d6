"""Hugging Face checkpoints in: bigjax's GPT and BERT give transformers' logits on its own
checkpoints (random small models, every weight random; tests/fixtures/hf, made by
make_fixtures.py), and have transformers' parameter counts at the published sizes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.finetuning import finetune
from bigjax.models import bert, build_model, hf
from bigjax.registry import ConfigError

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")
HEADS = {"gpt2": {}, "llama": {}, "qwen2": {}, "bert_mlm": dict(head="mlm", pooler=False),
         "bert_classifier": dict(head="classification", num_classes=3)}


def _imported(folder: str, **head):
  """(model, params, expected tokens and logits) of one fixture folder, through hf:."""
  path = hf.PREFIX + folder
  hf_config = hf.read_config(path)
  model = build_model({**hf.model_config(hf_config), **head})
  converted = hf.convert(hf.read_tensors(path), hf_config)
  unused = sorted(k for k in converted if k.startswith("unused:"))
  params = finetune.unflatten({k: jnp.asarray(v) for k, v in converted.items()
                               if not k.startswith("unused:")})
  expected = np.load(os.path.join(folder, "expected.npz"))
  return model, params, expected, unused


def _check_parity(folder: str, head: dict) -> None:
  model, params, expected, unused = _imported(folder, **head)
  assert unused == []  # every tensor has its place (tied copies accounted for)
  tokens = jnp.asarray(expected["tokens"], jnp.int32)
  target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens))["params"]
  shapes = lambda tree: {k: tuple(np.shape(v)) for k, v in finetune.flatten(tree).items()}
  assert shapes(params) == shapes(target)  # the same paths and shapes, nothing left out
  logits = np.asarray(model.apply({"params": params}, tokens))
  assert logits.shape == expected["logits"].shape
  np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_imported_checkpoints_give_transformers_logits(name):
  _check_parity(os.path.join(FIXTURES, name), HEADS[name])


@pytest.mark.slow
@pytest.mark.skipif(not (importlib.util.find_spec("torch")
                         and importlib.util.find_spec("transformers")),
                    reason="needs torch and transformers (make_fixtures.py's header)")
def test_fresh_fixtures_from_the_installed_transformers_match_too(tmp_path):
  subprocess.run([sys.executable, os.path.join(FIXTURES, "make_fixtures.py"),
                  f"--out={tmp_path}"], check=True, capture_output=True)
  for name, head in HEADS.items():
    _check_parity(str(tmp_path / name), head)


def test_parameter_counts_equal_transformers_at_the_published_sizes():
  def count(config, tokens):
    model = build_model(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens))["params"]
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  tokens = jnp.zeros((1, 8), jnp.int32)
  # transformers 5.24: BertModel(BertConfig()) and GPT2LMHeadModel(GPT2Config()).
  assert count(dict(name="bert", head="none", **bert.sized("base")), tokens) == 109_482_240
  gpt2 = hf.model_config({"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024,
                          "n_embd": 768, "n_layer": 12, "n_head": 12})
  assert count(gpt2, tokens) == 124_439_808
  # LlamaForCausalLM at Llama-2-7B's sizes and Qwen2ForCausalLM at Qwen2-0.5B's (tied,
  # 2 key/value heads, q/k/v biases), counted by transformers 5.24 on the meta device.
  llama = hf.model_config({"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
                           "num_hidden_layers": 32, "num_attention_heads": 32,
                           "num_key_value_heads": 32, "intermediate_size": 11008,
                           "max_position_embeddings": 4096})
  assert count(llama, tokens) == 6_738_415_616
  qwen2 = hf.model_config({"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
                           "num_hidden_layers": 24, "num_attention_heads": 14,
                           "num_key_value_heads": 2, "intermediate_size": 4864,
                           "max_position_embeddings": 32768, "tie_word_embeddings": True})
  assert count(qwen2, tokens) == 494_032_768
  # ViTForImageClassification(ViTConfig(num_labels=1000)): ViT-B/16 at 224x224.
  vit = {**hf.model_config({"model_type": "vit", "patch_size": 16, "hidden_size": 768,
                            "num_hidden_layers": 12, "num_attention_heads": 12,
                            "intermediate_size": 3072}), "num_classes": 1000}
  assert count(vit, jnp.zeros((1, 224, 224, 3))) == 86_567_656
  assert bert.sized("mini") == dict(depth=4, hidden_size=256, num_heads=4,
                                    intermediate_size=1024)


def test_a_folder_that_is_not_a_supported_checkpoint_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match="no such folder"):
    hf.read_config("hf:" + str(tmp_path / "missing"))
  with pytest.raises(ConfigError, match="has no config.json"):
    hf.read_config("hf:" + str(tmp_path))
  (tmp_path / "config.json").write_text('{"model_type": "t5"}')
  with pytest.raises(ConfigError, match='model_type "t5" is not supported; bigjax imports '
                     "gpt2, bert, llama, mistral, qwen2, vit"):
    hf.read_config("hf:" + str(tmp_path))
  scaled = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
  with pytest.raises(ConfigError, match='rope_type "llama3" .*default RoPE only'):
    hf.model_config(scaled)
  (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
  with pytest.raises(ConfigError, match="has no model.safetensors"):
    hf.read_tensors("hf:" + str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_init_from_hf_builds_the_checkpoints_architecture_and_fine_tunes_it(tmp_path, name):
  """A GPT config that names no sizes fine-tunes the GPT-2 fixture: its architecture comes
  from the checkpoint's config.json, every tensor loads (the table says so) into the params
  the run trains (at learning rate 0, the checkpoint holds exactly the imported ones)."""
  from bigjax import train
  from configs import lm_tiny
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("0101 10!, 0.1 " * 400)  # bytes 32-49: inside the fixture's 50 tokens
  config = lm_tiny.get_config("small")
  with config.unlocked():
    config.init_from.path = "hf:" + os.path.join(FIXTURES, name)
    config.data.path = str(corpus)
    config.data.seq_len = 12
    config.train.update(num_steps=4, batch_size=4, log_every_steps=1)
    config.optimizer.learning_rate = 0.0  # the imported params, unchanged, at every step
    config.report.update(plots=False, html=False, tensorboard=False)
  results = train.run(config, str(tmp_path / "run"))
  saved = train.load_run_config(str(tmp_path / "run"))
  assert (saved.model.hidden_size, saved.model.depth, saved.model.vocab_size) == (32, 2, 50)
  table = (tmp_path / "run" / "init_from.txt").read_text()
  assert "missing" not in table and "unused" not in table and "loaded" in table
  from bigjax.training import checkpoint
  _, params, _, _ = _imported(os.path.join(FIXTURES, name))
  _, trained = checkpoint.latest_params(str(tmp_path / "run"))
  jax.tree.map(np.testing.assert_array_equal, trained, jax.device_get(params))  # lr 0
  assert np.isfinite(results["test_loss"])


def test_a_checkpoint_of_another_family_is_named(tmp_path):
  from bigjax.finetuning import finetune
  from configs import lm_tiny
  config = lm_tiny.get_config("small")
  with config.unlocked():
    config.model.name = "bert"
    config.init_from.path = "hf:" + os.path.join(FIXTURES, "gpt2")
  with pytest.raises(ConfigError, match='is a gpt2 checkpoint, which bigjax builds as model '
                     '"gpt", but config.model.name is "bert"'):
    finetune.with_checkpoint_architecture(config)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_an_imported_llama_generates_with_its_grouped_key_value_cache_as_without(name):
  from bigjax.inference import sample
  model, params, expected, _ = _imported(os.path.join(FIXTURES, name))
  prompt = jnp.asarray(expected["tokens"][:, :4], jnp.int32)
  cached = sample.generate(model, params, prompt, 8, jax.random.PRNGKey(0), temperature=0)
  # The same greedy tokens by recomputing the whole sequence for each new one.
  tokens = prompt
  for _ in range(8):
    logits = model.apply({"params": params}, tokens)[:, -1]
    tokens = jnp.concatenate([tokens, logits.argmax(-1)[:, None].astype(tokens.dtype)], 1)
  np.testing.assert_array_equal(cached, tokens)


def test_an_imported_vit_classifier_gives_transformers_logits():
  model, params, expected, unused = _imported(os.path.join(FIXTURES, "vit"), num_classes=3)
  assert unused == []
  pixels = jnp.asarray(expected["pixels"])  # NHWC (transformers took them as NCHW)
  target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), pixels))["params"]
  shapes = lambda tree: {k: tuple(np.shape(v)) for k, v in finetune.flatten(tree).items()}
  assert shapes(params) == shapes(target)
  logits = np.asarray(model.apply({"params": params}, pixels))
  np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_an_imported_vit_fine_tunes_on_an_image_folder(tmp_path):
  from PIL import Image
  from bigjax import train
  from configs import cifar10_vit
  rng = np.random.default_rng(0)
  for label in ("ant", "bee", "cat"):
    os.makedirs(tmp_path / "images" / label)
    for i in range(12):
      pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
  config = cifar10_vit.get_config("small")
  with config.unlocked():
    config.init_from.update(path="hf:" + os.path.join(FIXTURES, "vit"), skip="^head/")
    config.data.update(source="folder", path=str(tmp_path / "images"), image_size=(16, 16),
                       test_fraction=0.25)
    config.model.num_classes = 3
    config.train.update(num_steps=3, batch_size=8)
    config.report.update(plots=False, html=False, tensorboard=False)
  results = train.run(config, str(tmp_path / "run"))
  saved = train.load_run_config(str(tmp_path / "run"))
  assert (saved.model.patch_size, saved.model.hidden_size, saved.model.norm_epsilon) == (
      4, 32, 1e-12)
  table = (tmp_path / "run" / "init_from.txt").read_text()
  assert "re-initialised" in table and "head/kernel" in table and "missing" not in table
  assert np.isfinite(results["test_loss"])


# What an export needs beyond the model config: a ViT's image shape, its class count.
EXPORT_SPECS = {"vit": dict(input_shape=[16, 16, 3], num_outputs=3)}


def _exported(name: str, folder):
  """Export the imported fixture `name` into `folder`; (its model config, params, expected)."""
  from bigjax.models import hf_export
  hf_config = hf.read_config(hf.PREFIX + os.path.join(FIXTURES, name))
  model_config = {**hf.model_config(hf_config), **HEADS.get(name, {})}
  _, params, expected, _ = _imported(os.path.join(FIXTURES, name), **HEADS.get(name, {}))
  hf_export.write(str(folder), params, model_config, EXPORT_SPECS.get(name))
  return model_config, params, expected


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "bert_mlm", "bert_classifier",
                                  "vit"])
def test_export_to_hugging_face_is_the_inverse_of_import(name, tmp_path):
  model_config, _, _ = _exported(name, tmp_path)
  original_config = hf.read_config(hf.PREFIX + os.path.join(FIXTURES, name))
  back = hf.read_config(hf.PREFIX + str(tmp_path))
  assert hf.model_config(back) == hf.model_config(original_config)  # the same architecture
  assert back["architectures"] == original_config["architectures"]
  original = hf.read_tensors(hf.PREFIX + os.path.join(FIXTURES, name))
  written = hf.read_tensors(hf.PREFIX + str(tmp_path))
  tied = {"lm_head.weight"} if original_config.get("tie_word_embeddings", name == "gpt2") else set()
  assert set(written) == set(original) - tied - {k for k in original if "position_ids" in k}
  for key in written:  # transformers' tensors, bit for bit
    np.testing.assert_array_equal(written[key], original[key])


@pytest.mark.parametrize("head", ["token_classification", "none"])
def test_bert_heads_without_a_fixture_export_and_import_back(head, tmp_path):
  """BertForTokenClassification and BertModel: a bigjax BERT's params out and back in."""
  from bigjax.models import hf_export
  model_config = dict(name="bert", vocab_size=40, hidden_size=16, depth=1, num_heads=2,
                      intermediate_size=32, max_positions=12, head=head, num_classes=5,
                      pooler=head == "none")
  model = build_model(model_config)
  tokens = jnp.asarray([[1, 7, 9, 2, 0, 0]], jnp.int32)
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  written = hf_export.write(str(tmp_path), params, model_config,
                            dict(class_names=list("abcde"), num_outputs=5))
  assert written["architectures"] == [hf_export.BERT_ARCHITECTURES[head]]
  if head == "token_classification":
    assert written["id2label"]["4"] == "e"
  converted = hf.convert(hf.read_tensors(hf.PREFIX + str(tmp_path)),
                         hf.read_config(hf.PREFIX + str(tmp_path)))
  assert not [k for k in converted if k.startswith("unused:")]
  flat = finetune.flatten(params)
  assert set(converted) == set(flat)
  for key, value in flat.items():
    np.testing.assert_array_equal(converted[key], np.asarray(value))


def test_a_model_without_a_transformers_twin_is_not_exported():
  from bigjax.models import hf_export
  with pytest.raises(ConfigError, match="matches no transformers architecture"):
    hf_export.hf_config_of(dict(name="gpt", hidden_size=32, num_heads=4, depth=1,
                                vocab_size=50, context_length=8, positions="rope"))
  with pytest.raises(ConfigError, match='writes GPT, BERT and ViT models .* this run is "mlp"'):
    hf_export.hf_config_of(dict(name="mlp"))
  bert_config = dict(name="bert", vocab_size=40, hidden_size=16, depth=1, num_heads=2,
                     intermediate_size=32)
  with pytest.raises(ConfigError, match="pre-LN .* no twin"):
    hf_export.hf_config_of(dict(bert_config, pre_norm=True))
  with pytest.raises(ConfigError, match='pools "mean".*model.pool=cls'):
    hf_export.hf_config_of(dict(bert_config, pool="mean"))
  with pytest.raises(ConfigError, match='ViT pools "mean"'):
    hf_export.hf_config_of(dict(name="vit", pool="mean"), dict(input_shape=[8, 8, 1]))
  with pytest.raises(ConfigError, match="needs the run's image shape"):
    hf_export.hf_config_of(dict(name="vit"), {})


@pytest.mark.slow
@pytest.mark.skipif(not (importlib.util.find_spec("torch")
                         and importlib.util.find_spec("transformers")),
                    reason="needs torch and transformers (make_fixtures.py's header)")
@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "bert_mlm", "bert_classifier",
                                  "vit"])
def test_transformers_loads_an_export_to_the_fixtures_logits(name, tmp_path):
  import torch
  import transformers
  _, _, expected = _exported(name, tmp_path)
  auto = (transformers.AutoModelForImageClassification if name == "vit"
          else transformers.AutoModelForMaskedLM if name == "bert_mlm"
          else transformers.AutoModelForSequenceClassification if name == "bert_classifier"
          else transformers.AutoModelForCausalLM)
  model = auto.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
  with torch.no_grad():
    if name == "vit":  # NHWC for bigjax, NCHW for transformers
      logits = model(torch.tensor(expected["pixels"]).permute(0, 3, 1, 2)).logits.numpy()
    elif name.startswith("bert"):
      tokens = torch.tensor(expected["tokens"])
      logits = model(tokens, attention_mask=(tokens != 0).long()).logits.numpy()
    else:
      logits = model(torch.tensor(expected["tokens"])).logits.numpy()
  np.testing.assert_allclose(logits, expected["logits"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_lora_fine_tunes_an_imported_checkpoint_and_exports_it_merged(name, tmp_path):
  """The LoRA recipe on a Hugging Face checkpoint: hf: sets the architecture, the imported
  weights load into the frozen base, only the rank-4 adapters train; exported back to
  transformers, the adapters are merged into exactly the weights they adapt."""
  from bigjax import train
  from bigjax.finetuning import lora
  from bigjax.training import checkpoint
  from configs import lm_tiny
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("0101 10!, 0.1 " * 400)
  config = lm_tiny.get_config("small")
  with config.unlocked():
    config.init_from.path = "hf:" + os.path.join(FIXTURES, name)
    config.lora.update(rank=4, alpha=8.0, targets="attention/qkv|mlp_")
    config.data.update(path=str(corpus), seq_len=12)
    config.train.update(num_steps=6, batch_size=4)
    config.optimizer.learning_rate = 1e-2
    config.report.update(plots=False, html=False, tensorboard=False)
  results = train.run(config, str(tmp_path / "run"))
  assert results["trainable_params"] < 0.5 * results["num_params"]
  _, trained = checkpoint.latest_params(str(tmp_path / "run"))
  assert lora.is_lora(trained)
  _, imported, _, _ = _imported(os.path.join(FIXTURES, name))
  jax.tree.map(np.testing.assert_array_equal, trained[lora.BASE], jax.device_get(imported))
  moved = [float(np.abs(b).max()) for path, b in finetune.flatten(trained[lora.ADAPTERS]).items()
           if path.endswith("/b")]
  assert moved and max(moved) > 0  # the adapters' B (zero at the start) trained
  from bigjax.inference import export
  from bigjax.models import hf_export
  saved = train.load_run_config(str(tmp_path / "run"))  # the architecture training built
  folder = export.export_hf(saved, str(tmp_path / "run"))
  written = hf.read_tensors(hf.PREFIX + folder)
  merged = hf_export.tensors_of(lora.merge(trained, 8.0 / 4), saved.model)
  original = hf.read_tensors(hf.PREFIX + os.path.join(FIXTURES, name))
  assert written.keys() == merged.keys()
  changed = set()
  for key in written:
    np.testing.assert_array_equal(written[key], merged[key])
    if not np.array_equal(written[key], original[key]):
      changed.add(key)
  adapted = ("q_proj", "k_proj", "v_proj", "mlp") if name == "llama" else ("c_attn", "mlp")
  assert changed and all(any(a in key for a in adapted) and key.endswith("weight")
                         for key in changed), sorted(changed)


def _trained_vit(tmp_path):
  """A ViT trained one epoch on digits, standardised (so the preprocessing has statistics)."""
  import ml_collections
  from bigjax import train
  from conftest import digits_config
  config = digits_config(**{"train.num_epochs": 1, "data.standardize": True})
  with config.unlocked():
    config.model = ml_collections.ConfigDict(dict(
        name="vit", patch_size=4, hidden_size=16, depth=1, num_heads=2, mlp_ratio=2.0,
        num_classes=10, gelu_approximate=False))
  train.run(config, str(tmp_path / "run"))
  return config, str(tmp_path / "run")


@pytest.mark.slow
def test_a_trained_vit_exports_with_its_class_names_and_preprocessing(tmp_path):
  import json
  from bigjax.inference import export, portable
  from bigjax.training import checkpoint
  config, run = _trained_vit(tmp_path)
  folder = export.export_hf(config, run)
  hf_config = hf.read_config(hf.PREFIX + folder)
  spec = portable.read_spec(run)
  assert hf_config["architectures"] == ["ViTForImageClassification"]
  assert (hf_config["image_size"], hf_config["num_channels"]) == (8, 1)
  assert [hf_config["id2label"][str(i)] for i in range(10)] == spec["class_names"]
  back = hf.convert(hf.read_tensors(hf.PREFIX + folder), hf_config)
  _, trained = checkpoint.latest_params(run)
  assert back.keys() == finetune.flatten(trained).keys()
  for key, value in finetune.flatten(trained).items():
    np.testing.assert_array_equal(back[key], value)
  processor = json.load(open(os.path.join(folder, "preprocessor_config.json")))
  assert processor["rescale_factor"] == 1 / spec["pixel_max"] and processor["do_normalize"]
  np.testing.assert_allclose(processor["image_mean"], np.ravel(spec["mean"]), rtol=1e-6)
  assert "AutoModelForImageClassification" in open(os.path.join(folder, "README.md")).read()


@pytest.mark.slow
@pytest.mark.skipif(not (importlib.util.find_spec("torch")
                         and importlib.util.find_spec("transformers")),
                    reason="needs torch and transformers (make_fixtures.py's header)")
def test_transformers_predicts_as_the_run_from_raw_pixels(tmp_path):
  """The export's image processor and model, on raw digit pixels, give the run's logits."""
  import torch
  import transformers
  from sklearn.datasets import load_digits
  from bigjax.inference import export, portable
  config, run = _trained_vit(tmp_path)
  folder = export.export_hf(config, run)
  predictor = portable.load(run, config)
  raw = load_digits().images[:5, :, :, None].astype(np.float32)  # [0, 16], NHWC
  expected = predictor.outputs(predictor.prepare(raw / predictor.spec["pixel_max"]))
  processor = transformers.AutoImageProcessor.from_pretrained(folder)
  pixels = processor(list(raw), return_tensors="pt", input_data_format="channels_last",
                     do_resize=False).pixel_values
  model = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
  with torch.no_grad():
    logits = model(pixels).logits.numpy()
  np.testing.assert_allclose(logits, expected, atol=1e-4)
