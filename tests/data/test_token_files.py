"""A language model's corpus tokenized once into a tokens folder
(config.data.source="tokens"): the windows, splits and training of the in-memory source."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigjax import train
from bigjax.data import sources, token_files
from bigjax.registry import ConfigError
from bigjax.training import checkpoint
from conftest import REPO_ROOT
from configs import lm_tiny


def _corpus(root) -> str:
  """Three files: indented lines, blank runs, multi-byte characters, one without a final
  newline: the places where a chunk cut could change the tokens."""
  rng = np.random.default_rng(0)
  words = ["orbit", "rocket", "café", "naïve", "star", "moon", "ünter", "-- Anon", "\t"]
  folder = root / "corpus"
  folder.mkdir()
  for i in range(3):
    lines = [(" " * int(rng.integers(0, 3))) + " ".join(rng.choice(words, 7))
             + "\n" * int(rng.integers(1, 4)) for _ in range(300)]
    text = "".join(lines)
    (folder / f"part{i}.txt").write_text(text.rstrip("\n") if i == 1 else text)
  return str(folder)


def _config(corpus, **overrides):
  config = lm_tiny.get_config("small")
  with config.unlocked():
    config.data.path = corpus
    config.train.num_steps = 30
    config.report.update(plots=False, html=False, tensorboard=False)
    config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe:300"])
def test_a_tokens_folder_holds_the_windows_of_the_text_source(tokenizer, tmp_path):
  """Written a small chunk at a time (cuts at many line starts), read back by position:
  every split's windows and next-token targets are those of the text source, with its
  tokenizer (trained on the training text alone)."""
  data = _config(_corpus(tmp_path), **{"data.tokenizer": tokenizer}).data
  folder = str(tmp_path / "tokens")
  info = token_files.write_corpus(data, folder, chunk_bytes=512)
  assert info["dtype"] == "uint16" and list(info["splits"]) == ["train", "validation", "test"]
  whole = sources.load_raw(data)
  streamed = sources.load_raw(dict(data, source="tokens", path=folder))
  assert streamed.tokenizer == whole.tokenizer
  assert info["top_token"] == max(int(whole.train_inputs.max()), int(whole.test_inputs.max()),
                                  int(whole.validation_inputs.max()))
  for split in ("train", "validation", "test"):
    inputs, targets = (getattr(streamed, f"{split}_{k}") for k in ("inputs", "targets"))
    assert isinstance(inputs, token_files.TokenWindows) and inputs.dtype == np.int32
    assert inputs.shape == getattr(whole, f"{split}_inputs").shape
    np.testing.assert_array_equal(inputs[np.arange(len(inputs))],
                                  getattr(whole, f"{split}_inputs"))
    np.testing.assert_array_equal(np.asarray(targets), getattr(whole, f"{split}_targets"))
  # A selection stays unread; a reader travels to a worker process by its file's name.
  rows = streamed.train_targets.select(np.asarray([9, 2, 5]))
  again = pickle.loads(pickle.dumps(rows))
  np.testing.assert_array_equal(again[[2, 0]], whole.train_targets[[5, 9]])
  # The windows are cut when read: another seq_len needs no new tokens folder.
  longer = sources.load_raw(dict(data, source="tokens", path=folder, seq_len=64))
  assert longer.train_inputs.shape[1] == 64
  np.testing.assert_array_equal(longer.train_targets[[0]][0, :63],
                                longer.train_inputs[[0]][0, 1:])


def test_make_records_writes_a_tokens_folder_from_a_text_config(tmp_path):
  corpus = _corpus(tmp_path)
  proc = subprocess.run([sys.executable, "-m", "bench.make_records",
                         "--config=configs/lm_tiny.py:small", f"--config.data.path={corpus}",
                         f"--out={tmp_path / 'tokens'}"], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  counts = json.loads(proc.stdout.strip().splitlines()[-1])["records"]
  whole = sum(len(open(p, "rb").read()) + (i == 1) for i, p in enumerate(
      sorted((tmp_path / "corpus").iterdir())))  # (part1 gets its final newline)
  assert sum(counts.values()) == whole and set(counts) == {"train", "validation", "test"}


def test_bad_token_corpora_are_one_line(tmp_path):
  corpus = _corpus(tmp_path)
  (tmp_path / "corpus" / "part1.txt").write_bytes(b"fine text\nthen \xff here\n")
  with pytest.raises(ConfigError, match=r"part1.txt is not UTF-8 text: byte 15 \(0xff\)"):
    token_files.write_corpus(_config(corpus).data, str(tmp_path / "bad"), chunk_bytes=8)
  with pytest.raises(ConfigError, match="no such folder .*bench.make_records"):
    sources.load_raw(dict(_config(corpus).data, source="tokens", path=str(tmp_path / "no")))
  with pytest.raises(ConfigError, match="not a tokens folder"):
    sources.load_raw(dict(_config(corpus).data, source="tokens", path=corpus))
  (tmp_path / "corpus" / "part1.txt").write_text("good again\n")
  folder = str(tmp_path / "tokens")
  token_files.write_corpus(_config(corpus).data, folder)
  with pytest.raises(ConfigError, match=r"The train split of .* holds \d+ tokens: no window "
                                        r"of seq_len=100000"):
    sources.load_raw(dict(_config(corpus).data, source="tokens", path=folder, seq_len=100000))
  # Token ids past the model's vocabulary, found from info.json (no token is read).
  with pytest.raises(ConfigError, match=r"token ids up to \d+, but the model's vocabulary is "
                                        r"config.model.vocab_size=100"):
    train.run(_config(folder, **{"data.source": "tokens", "data.placement": "host",
                                 "model.vocab_size": 100}), str(tmp_path / "run"))


@pytest.mark.slow
def test_a_streamed_tokens_folder_trains_exactly_as_the_text_in_memory(tmp_path):
  corpus = _corpus(tmp_path)
  token_files.write_corpus(_config(corpus).data, str(tmp_path / "tokens"), chunk_bytes=4096)
  whole = train.run(_config(corpus), str(tmp_path / "whole"))
  streamed = train.run(_config(str(tmp_path / "tokens"), **{
      "data.source": "tokens", "data.placement": "host", "data.worker_count": 1}),
      str(tmp_path / "streamed"))
  assert streamed["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-6)
  a = checkpoint.latest_params(str(tmp_path / "whole"))[1]
  b = checkpoint.latest_params(str(tmp_path / "streamed"))[1]
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_a_tfds_text_corpus_becomes_a_tokens_folder_on_mock_data(tmp_path):
  """tfds_text: TFDS's train split (its end held out as validation) and test split, byte
  tokens, the windows of the in-memory source."""
  import tensorflow_datasets as tfds
  data = lm_tiny.get_config("small,tiny_shakespeare").data
  with tfds.testing.mock_data(num_examples=400):
    whole = sources.load_raw(data)
    info = token_files.write_corpus(data, str(tmp_path / "tokens"), chunk_bytes=256)
  assert list(info["splits"]) == ["train", "validation", "test"]
  streamed = sources.load_raw(dict(data, source="tokens", path=str(tmp_path / "tokens")))
  for split in ("train", "validation", "test"):
    np.testing.assert_array_equal(np.asarray(getattr(streamed, f"{split}_inputs")),
                                  getattr(whole, f"{split}_inputs"))
  with pytest.raises(ConfigError, match="a TFDS text corpus is byte tokens"):
    token_files.write_corpus(dict(data, tokenizer="bpe:300"), str(tmp_path / "no"))
