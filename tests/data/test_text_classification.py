"""Labelled texts from CSV/TSV/JSONL files and folders, tokenized once into [N, seq_len]."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bigjax.data import sources
from bigjax.data import text_classification as tc
from bigjax.registry import ConfigError


def test_every_layout_reads_the_same_texts_and_labels(tmp_path):
  rows = [("a cat sat", "pets"), ("stocks fell, again", "money"), ("a dog ran", "pets")]
  with open(tmp_path / "d.csv", "w") as f:
    f.write("body,topic\n" + "".join(f'"{t}",{c}\n' for t, c in rows))
  with open(tmp_path / "d.tsv", "w") as f:
    f.write("body\ttopic\n" + "".join(f"{t}\t{c}\n" for t, c in rows))
  with open(tmp_path / "d.jsonl", "w") as f:
    f.write("".join(json.dumps({"body": t, "topic": c}) + "\n" for t, c in rows))
  for c in ("pets", "money"):
    (tmp_path / "folders" / c).mkdir(parents=True)
  for i, (t, c) in enumerate(rows):
    (tmp_path / "folders" / c / f"{i}.txt").write_text(t)
  (tmp_path / "records").mkdir()
  (tmp_path / "records" / "pets").write_text("a cat sat\n%\na dog ran\n%\n")
  (tmp_path / "records" / "money").write_text("stocks fell, again\n")
  (tmp_path / "records" / "pets.dat").write_bytes(b"\x00index")  # fortune's: skipped
  expected = sorted(rows)
  for name in ("d.csv", "d.tsv", "d.jsonl"):
    texts, labels = tc.read_texts(str(tmp_path / name), "body", "topic")
    assert sorted(zip(texts, labels)) == expected, name
  for name in ("folders", "records"):
    texts, labels = tc.read_texts(str(tmp_path / name))
    assert sorted(zip(texts, labels)) == expected, name
  texts, labels = tc.read_texts(str(tmp_path / "records"), categories=("pets",))
  assert labels == ["pets", "pets"]


def test_bad_layouts_are_one_line(tmp_path):
  (tmp_path / "d.csv").write_text("text,label\nhello,a\n")
  with pytest.raises(ConfigError, match=r"d.csv, line 2: no column \['topic'\].*label_column"):
    tc.read_texts(str(tmp_path / "d.csv"), "text", "topic")
  with pytest.raises(ConfigError, match="categories names \\['nope'\\]"):
    tc.read_texts(str(tmp_path), categories=("nope",))
  with pytest.raises(ConfigError, match="no such file or folder"):
    tc.read_texts(str(tmp_path / "missing"))


def test_byte_tokens_start_with_cls_end_with_sep_and_pad_and_cuts_are_counted(caplog):
  with caplog.at_level("INFO"):
    tokens = tc.tokenize(["ab", "é", "x" * 20], tc.tokenizer_for("bytes"), 8)
  assert tokens.dtype == np.int32 and tokens.shape == (3, 8)
  off = tc.BYTE_OFFSET
  assert tokens[0].tolist() == [tc.CLS, ord("a") + off, ord("b") + off, tc.SEP, 0, 0, 0, 0]
  assert tokens[1, 1:3].tolist() == [0xC3 + off, 0xA9 + off]  # UTF-8 bytes of "é"
  assert tokens[2, -1] == tc.SEP and (tokens[2, 1:-1] == ord("x") + off).all()
  assert "1 of 3 texts are longer than seq_len=8 tokens and were cut" in caplog.text


def test_a_hugging_face_tokenizer_json_is_used_as_is(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
  tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.train_from_iterator(["the cat sat on the mat", "the dog ran"] * 20,
                                trainers.WordPieceTrainer(
                                    vocab_size=60, special_tokens=["[PAD]", "[UNK]", "[CLS]",
                                                                   "[SEP]", "[MASK]"]))
  cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
  path = str(tmp_path / "tokenizer.json")
  tokenizer.save(path)
  tokens = tc.tokenize(["the cat sat", "the dog"], tc.tokenizer_for(path), 6)
  assert tokens[0].tolist() == tokenizer.encode("the cat sat").ids + [0]
  assert tokens[1].tolist() == tokenizer.encode("the dog").ids + [0, 0]
  with pytest.raises(ConfigError, match="no such tokenizer.json"):
    tc.tokenizer_for(str(tmp_path / "nope.json"))


def test_the_source_holds_out_a_fixed_test_split_with_class_names(tmp_path):
  (tmp_path / "c").mkdir()
  for name, n in (("ham", 30), ("spam", 20)):
    (tmp_path / "c" / name).write_text("\n%\n".join(f"{name} {i}" for i in range(n)))
  config = {"path": str(tmp_path / "c"), "split_seed": 0, "test_fraction": 0.2, "seq_len": 8}
  raw = sources.SOURCES.get("text_classification")(config)
  again = sources.SOURCES.get("text_classification")(config)
  assert raw.class_names == ["ham", "spam"] and raw.pixel_max == 0.0
  assert raw.train_inputs.shape == (40, 8) and raw.test_inputs.shape == (10, 8)
  np.testing.assert_array_equal(raw.test_inputs, again.test_inputs)  # fixed by split_seed
  assert set(raw.train_targets.tolist()) == {0, 1}


@pytest.mark.parametrize("spec", ["bytes", "wordpiece:300"])
def test_packed_texts_fill_every_row_and_keep_every_token(spec, tmp_path):
  """pack_texts (masked-LM pre-training): each split's texts whole and end to end, in rows
  of seq_len; only the last row is padded; rows are the same texts a padded row would
  start with; a classifier's config is refused."""
  (tmp_path / "c").mkdir()
  for name, n in (("ham", 30), ("spam", 20)):
    (tmp_path / "c" / name).write_text("\n%\n".join(f"{name} number {i} " * (i % 4 + 1)
                                                     for i in range(n)))
  config = {"path": str(tmp_path / "c"), "split_seed": 0, "test_fraction": 0.2, "seq_len": 8,
            "tokenizer": spec, "augment": {"mlm_probability": 0.15}}
  padded = sources.SOURCES.get("text_classification")(config)
  packed = sources.SOURCES.get("text_classification")({**config, "pack_texts": True})
  assert packed.class_names == padded.class_names
  assert (packed.tokenizer is None) == (spec == "bytes")  # (a trained one is kept)
  train, test = sources.labelled_texts(config)[:2]
  tokenizer = (tc.tokenizer_for("bytes") if spec == "bytes"
               else tc.FileTokenizer(__import__("tokenizers").Tokenizer.from_str(
                   packed.tokenizer)))
  for texts, rows, labels in ((train[0], packed.train_inputs, packed.train_targets),
                              (test[0], packed.test_inputs, packed.test_targets)):
    stream = np.concatenate([np.asarray(ids) for ids in tokenizer.ids(texts)])
    assert rows.shape == (-(-len(stream) // 8), 8) and rows.dtype == np.int32
    np.testing.assert_array_equal(rows.reshape(-1)[:len(stream)], stream)
    assert (rows.reshape(-1)[len(stream):] == tc.PAD).all()
    assert (labels == 0).all() and len(labels) == len(rows)
    assert (rows[:-1] != tc.PAD).all()  # no padding but the last row's
    assert (stream == tc.CLS).sum() == len(texts) == (stream == tc.SEP).sum()
  # Cut to rows of 8, the longer texts lose tokens.
  assert (padded.train_inputs != tc.PAD).sum() < (packed.train_inputs != tc.PAD).sum()
  with pytest.raises(ConfigError, match="pack_texts=True joins texts.*masked-LM pre-training"):
    sources.SOURCES.get("text_classification")({**config, "pack_texts": True, "augment": {}})


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_a_tokenizer_trained_on_the_training_texts_keeps_the_special_ids(kind, tmp_path):
  """wordpiece:N / bpe:N: [PAD]=0, [CLS]=1, [SEP]=2, [MASK]=3 as the byte tokenizer's (so
  masked-LM masking is the same), trained on the texts outside the test split only, and
  saved with the data; that tokenizer.json given back gives the same tokens."""
  (tmp_path / "c").mkdir()
  for name, word in (("ham", "bread"), ("spam", "rocket")):
    (tmp_path / "c" / name).write_text("\n%\n".join(f"{word} number {i}" for i in range(30)))
  config = {"path": str(tmp_path / "c"), "split_seed": 0, "test_fraction": 0.2, "seq_len": 8,
            "tokenizer": f"{kind}:300"}
  raw = sources.SOURCES.get("text_classification")(config)
  from tokenizers import Tokenizer
  tokenizer = Tokenizer.from_str(raw.tokenizer)
  assert [tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")] == [
      tc.PAD, tc.CLS, tc.SEP, tc.MASK]
  for row in np.concatenate([raw.train_inputs, raw.test_inputs]):
    body = row[row != tc.PAD]
    assert body[0] == tc.CLS and body[-1] == tc.SEP and (row[len(body):] == tc.PAD).all()
  assert tokenizer.token_to_id("bread") is not None  # whole words of the training texts
  assert tokenizer.encode("bread number 7").ids[0] == tc.CLS
  path = tmp_path / "tokenizer.json"
  path.write_text(raw.tokenizer)
  again = sources.SOURCES.get("text_classification")({**config, "tokenizer": str(path)})
  np.testing.assert_array_equal(again.train_inputs, raw.train_inputs)
  np.testing.assert_array_equal(again.test_inputs, raw.test_inputs)
  with pytest.raises(ConfigError, match='use "bytes", "wordpiece:N" or "bpe:N" with N >= 260'):
    tc.tokenizer_for(f"{kind}:12")


def test_a_trained_tokenizer_never_sees_the_test_texts(tmp_path):
  (tmp_path / "c").mkdir()
  words = [f"w{chr(97 + i)}{chr(97 + j)}" for i in range(20) for j in range(5)]  # 100 words
  (tmp_path / "c" / "a").write_text("\n%\n".join(f"{w} {w} {w}" for w in words[:50]))
  (tmp_path / "c" / "b").write_text("\n%\n".join(f"{w} {w} {w}" for w in words[50:]))
  config = {"path": str(tmp_path / "c"), "split_seed": 0, "test_fraction": 0.2, "seq_len": 8,
            "tokenizer": "wordpiece:2000"}
  raw = sources.SOURCES.get("text_classification")(config)
  from tokenizers import Tokenizer
  tokenizer = Tokenizer.from_str(raw.tokenizer)
  vocabulary = tokenizer.get_vocab()
  # Each text is one word thrice: a text's word is a whole token iff the text is in train.
  assert len([w for w in words if w in vocabulary]) == 80  # the 80 training texts' words
  for row in raw.test_inputs:  # a test text's word comes in pieces
    assert len(tokenizer.decode(row[1:2].tolist())) < 3


@pytest.mark.slow
def test_a_tfds_text_classification_dataset_by_name_trains_on_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  from bigjax import train
  from bigjax.data import sources
  from configs import fortunes_bert
  config = fortunes_bert.get_config("small")
  with config.unlocked():
    config.data.update(source="tfds_text_classification", name="imdb_reviews",
                       download=True, categories=())
    config.model.num_classes = 2
    config.train.update(num_steps=4, batch_size=8)
    config.report.update(plots=False, html=False, tensorboard=False)
  with tfds.testing.mock_data(num_examples=40):
    raw = sources.load_raw(config.data)
    results = train.run(config, str(tmp_path / "run"))
  assert raw.class_names == ["neg", "pos"] and raw.train_inputs.shape == (40, 32)
  assert set(np.unique(raw.train_targets)) <= {0, 1}
  assert np.isfinite(results["test_loss"])
  with pytest.raises(ConfigError, match='no text feature "review"'):
    with tfds.testing.mock_data(num_examples=4):
      sources.load_raw(dict(config.data, text_column="review"))


def test_categories_select_labels_of_a_table_and_unknown_ones_are_named(tmp_path):
  from configs import fortunes_bert
  path = tmp_path / "texts.csv"
  path.write_text("text,label\n" + "".join(f"text {i},{'abc'[i % 3]}\n" for i in range(30)))
  data = dict(fortunes_bert.get_config("small").data, path=str(path))
  raw = sources.SOURCES.get("text_classification")(dict(data, categories=("c", "a")))
  assert raw.class_names == ["c", "a"]
  assert len(raw.train_targets) + len(raw.test_targets) == 20  # the b texts left out
  with pytest.raises(ConfigError, match=r"categories names \['x'\], which no text .* the "
                     r"labels are \['a', 'b', 'c'\]"):
    sources.SOURCES.get("text_classification")(dict(data, categories=("a", "x")))


@pytest.mark.slow
def test_a_resumed_run_tokenizes_with_the_tokenizer_it_started_with(tmp_path, caplog):
  """A trained tokenizer (wordpiece:N) is trained once, when a run starts, and kept as its
  tokenizer.json: `tokenizers` does not train the same WordPiece vocabulary twice from the
  same texts (huggingface/tokenizers#1794), so a resumed run, an evaluation or an export
  that trained its own would feed the model other ids."""
  import logging
  import ml_collections
  from bigjax import train
  from bigjax.training.programs import with_kept_tokenizer
  from configs import fortunes_bert
  (tmp_path / "c").mkdir()
  for name, word in (("ham", "bread"), ("spam", "rocket")):
    (tmp_path / "c" / name).write_text("\n%\n".join(f"{word} number {i} of {3 * i}"
                                                    for i in range(40)))
  config = fortunes_bert.get_config("small")
  with config.unlocked():
    config.data.update(path=str(tmp_path / "c"), categories=("ham", "spam"),
                       tokenizer="wordpiece:300")
    config.model.update(num_classes=2, vocab_size=300)
    config.train.update(num_epochs=1, steps_per_call=1)
    config.report.update(plots=False, html=False, tensorboard=False)
  workdir = str(tmp_path / "run")
  assert with_kept_tokenizer(config, workdir) is config  # nothing kept yet
  train.run(config, workdir)
  kept = (tmp_path / "run" / "tokenizer.json").read_text()
  assert with_kept_tokenizer(config, workdir).data.tokenizer == f"{workdir}/tokenizer.json"
  assert config.data.tokenizer == "wordpiece:300"  # (a copy: the caller's config unchanged)
  for spec in ("bytes", str(tmp_path / "given.json")):  # nothing trained: as given
    other = ml_collections.ConfigDict({"data": {"tokenizer": spec}})
    assert with_kept_tokenizer(other, workdir) is other
  with config.unlocked():
    config.train.num_epochs = 2
  with caplog.at_level(logging.INFO):
    results = train.run(config, workdir)
  assert "resumed from step" in caplog.text
  assert f"tokenizing with the run's own {workdir}/tokenizer.json" in caplog.text
  assert (tmp_path / "run" / "tokenizer.json").read_text() == kept
  assert results["metrics"]["test"]["count"] == 16
