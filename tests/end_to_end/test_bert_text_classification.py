"""A BERT-style encoder classifies texts end to end (configs/fortunes_bert.py's recipe, on a
small corpus made here so no package is needed)."""

from __future__ import annotations

import numpy as np
import pytest

from bigjax import train
from bigjax.registry import ConfigError
from configs import fortunes_bert


def _corpus(tmp_path):
  """Two categories whose texts differ in vocabulary: learnable in one short run."""
  rng = np.random.default_rng(0)
  words = {"space": ["orbit", "rocket", "planet", "star", "moon"],
           "kitchen": ["bread", "butter", "spoon", "soup", "salt"]}
  folder = tmp_path / "texts"
  folder.mkdir(exist_ok=True)
  for name, vocabulary in words.items():
    texts = [" ".join(rng.choice(vocabulary, 6)) for _ in range(150)]
    (folder / name).write_text("\n%\n".join(texts))
  return folder


def _config(tmp_path, **overrides):
  config = fortunes_bert.get_config("small")
  with config.unlocked():
    config.data.path = str(_corpus(tmp_path))
    config.data.categories = ("space", "kitchen")
    config.model.num_classes = 2
    config.train.num_epochs = 12
    config.report.update(plots=False, html=False, tensorboard=False)
    config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.slow
def test_a_small_bert_learns_to_classify_texts(tmp_path):
  results = train.run(_config(tmp_path), str(tmp_path / "run"))
  assert results["test_accuracy"] >= 0.95, results["test_accuracy"]  # chance: 0.5
  assert results["metrics"]["test"]["count"] == 60


def test_a_vocabulary_smaller_than_the_tokens_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match=r"token ids up to \d+, but the model's vocabulary is "
                     r"config.model.vocab_size=100"):
    train.run(_config(tmp_path, **{"model.vocab_size": 100}), str(tmp_path / "run"))


@pytest.mark.slow
def test_masked_lm_pre_training_then_fine_tuning(tmp_path):
  """The mlm variant learns to fill in masked bytes (its loss falls well below the uniform
  guess over 260 tokens), and its encoder loads into a classifier, whose new pooler and
  classifier are re-initialised."""
  import json
  config = fortunes_bert.get_config("mlm,small")
  with config.unlocked():
    config.data.path = str(_corpus(tmp_path))
    config.train.num_epochs = 30
    config.optimizer.learning_rate = 3e-3
    config.report.update(plots=False, html=False, tensorboard=False)
  pretrained = tmp_path / "mlm"
  train.run(config, str(pretrained))
  rows = [json.loads(line) for line in open(pretrained / "metrics.jsonl")]
  losses = [r["loss"] for r in rows if r["split"] == "train"]
  assert losses[0] > 4.5 and losses[-1] < 2.5, losses  # ln 260 = 5.56
  # Validation and test are masked once: accuracy on their masked tokens, the same each time.
  results = json.load(open(pretrained / "results.json"))
  test = results["metrics"]["test"]
  assert test["masked_tokens"] > 50 and test["masked_accuracy"] > 0.15  # chance: ~1/256
  from bigjax.inference import evaluate as inference
  again = inference.evaluate(config, str(pretrained), "test")["test"]
  assert again == test
  tuned = train.run(_config(tmp_path, **{"init_from.path": str(pretrained),
                                         "init_from.skip": "^(mlm_|pooler|classifier)"}),
                    str(tmp_path / "tuned"))
  table = (tmp_path / "tuned" / "init_from.txt").read_text()
  assert "classifier/kernel" in table and "missing" not in table
  assert tuned["test_accuracy"] >= 0.95
  # The pre-trained encoder out to transformers as BertForMaskedLM, every array as trained.
  from bigjax.inference import export
  folder = export.export_hf(config, str(pretrained))
  _assert_exported_as(folder, "BertForMaskedLM", str(pretrained))


def _assert_exported_as(folder: str, architecture: str, run: str) -> dict:
  from bigjax.finetuning import finetune
  from bigjax.models import hf
  from bigjax.training import checkpoint
  hf_config = hf.read_config(hf.PREFIX + folder)
  assert hf_config["architectures"] == [architecture]
  back = hf.convert(hf.read_tensors(hf.PREFIX + folder), hf_config)
  _, trained = checkpoint.latest_params(run)
  assert back.keys() == finetune.flatten(trained).keys()
  for key, value in finetune.flatten(trained).items():
    np.testing.assert_array_equal(back[key], value)
  return hf_config


@pytest.mark.slow
def test_a_cls_pooled_classifier_exports_to_transformers_and_a_mean_pooled_one_says_why(
    tmp_path):
  from bigjax.inference import export
  config = _config(tmp_path, **{"train.num_epochs": 1, "model.pool": "cls"})
  train.run(config, str(tmp_path / "run"))
  folder = export.export_hf(config, str(tmp_path / "run"))
  hf_config = _assert_exported_as(folder, "BertForSequenceClassification",
                                  str(tmp_path / "run"))
  assert hf_config["id2label"] == {"0": "space", "1": "kitchen"}
  assert "[b + 4 for b in text.encode()]" in open(folder + "/README.md").read()
  with pytest.raises(ConfigError, match='pools "mean".*model.pool=cls'):
    export.export_hf(_config(tmp_path), str(tmp_path / "run"))


@pytest.mark.slow
def test_a_fine_tune_must_tokenize_as_its_pre_training_did(tmp_path):
  """A pre-training with a trained WordPiece keeps its tokenizer.json; a fine-tune that
  would train another is refused in one line naming the file, and runs given it."""
  config = fortunes_bert.get_config("mlm,small")
  with config.unlocked():
    config.data.update(path=str(_corpus(tmp_path)), tokenizer="wordpiece:300")
    config.model.vocab_size = 300
    config.train.num_epochs = 1
    config.report.update(plots=False, html=False, tensorboard=False)
  pretrained = tmp_path / "mlm"
  train.run(config, str(pretrained))
  assert (pretrained / "tokenizer.json").exists()
  fine = {"init_from.path": str(pretrained), "init_from.skip": "^(mlm_|pooler|classifier)",
          "model.vocab_size": 300, "train.num_epochs": 1}
  with pytest.raises(ConfigError, match=r"trained with its own tokenizer.*--config.data."
                     r"tokenizer=.*mlm/tokenizer.json"):
    train.run(_config(tmp_path, **fine, **{"data.tokenizer": "wordpiece:300"}),
              str(tmp_path / "mismatched"))
  assert not (tmp_path / "mismatched" / "config.json").exists()  # nothing written
  train.run(_config(tmp_path, **fine, **{"data.tokenizer": str(pretrained / "tokenizer.json")}),
            str(tmp_path / "tuned"))
  from tokenizers import Tokenizer
  vocabulary = lambda run: Tokenizer.from_file(str(run / "tokenizer.json")).get_vocab()
  assert vocabulary(tmp_path / "tuned") == vocabulary(pretrained)  # kept with the fine-tune
