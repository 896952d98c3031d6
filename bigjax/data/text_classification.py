"""Text classification data: labelled texts as token sequences [N, seq_len] with their class.

Where the texts come from (`config.data.path`):
  a .csv / .tsv file     columns `text_column` and `label_column` (header row)
  a .jsonl file          one object per line with those two keys
  a folder of folders    <class>/*.txt, one text per file
  a folder of files      <class> files holding many texts, split at lines equal to
                         `record_separator` (Debian's fortunes: "%"); `categories` picks some

Tokens: `tokenizer="bytes"` (no setup) is UTF-8 bytes shifted past four special ids,
[PAD]=0, [CLS]=1, [SEP]=2, [MASK]=3 (vocabulary 260), each text as [CLS] bytes... [SEP];
"wordpiece:N" (BERT's kind: lower-cased words and word pieces) or "bpe:N" (GPT-2's
byte-level BPE) trains a tokenizer of N tokens with Hugging Face `tokenizers` on the texts
outside the test split, with the same four special ids first; or the path of a
`tokenizer.json` (WordPiece, BPE, SentencePiece-style; a pre-training run's own), whose
[CLS]/[SEP] template applies. Any tokenizer but bytes is saved with the run. Texts longer
than `seq_len` are cut (the log counts them) and shorter ones padded with the pad id; the
models mask the padding. Tokenization happens once, when the data is read.

Masked-LM pre-training can pack instead (`pack_texts=True`, `pack`): every text encoded
whole, the texts end to end, cut into rows of `seq_len`. No slot is padding and no text is
cut short (RoBERTa's FULL-SENTENCES), so an epoch computes on real tokens only: on Debian's
fortunes, whose texts average 50 WordPiece tokens, rows of 64 cut and padded hold 35 real
tokens each. (Yet there a masked-LM learned slower per step packed: configs/fortunes_bert.py.)
"""

from __future__ import annotations

import csv
import json
import logging as py_logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from bigjax.registry import ConfigError

logging = py_logging.getLogger(__name__)

PAD, CLS, SEP, MASK = 0, 1, 2, 3
BYTE_OFFSET = 4
BYTE_VOCAB = 256 + BYTE_OFFSET


def read_texts(path: str, text_column: str = "text", label_column: str = "label",
               record_separator: str = "%", categories: Sequence[str] = ()
               ) -> tuple[list[str], list[str]]:
  """(texts, their class names) from a file or folder (the module's docstring)."""
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    if path.endswith(".jsonl"):
      return _read_jsonl(path, text_column, label_column)
    if path.endswith((".csv", ".tsv")):
      return _read_table(path, text_column, label_column)
    raise ConfigError(f"{path}: give a .csv, .tsv or .jsonl file, or a folder (one "
                      "subfolder or file per class).")
  if not os.path.isdir(path):
    raise ConfigError(f"config.data.path={path!r}: no such file or folder of labelled texts.")
  entries = sorted(e for e in os.listdir(path) if not e.startswith(".")
                   and not e.endswith((".dat", ".u8")))  # (fortune's index files)
  if categories:
    missing = sorted(set(categories) - set(entries))
    if missing:
      raise ConfigError(f"config.data.categories names {missing}, which {path} lacks; it "
                        f"has {entries[:30]}.")
    entries = list(categories)
  texts, labels = [], []
  for entry in entries:
    full = os.path.join(path, entry)
    if os.path.isdir(full):
      records = [_read(os.path.join(full, f)) for f in sorted(os.listdir(full))
                 if os.path.isfile(os.path.join(full, f))]
    else:
      lines = _read(full).split("\n")
      records, current = [], []
      for line in lines:
        if line.strip() == record_separator:
          records.append("\n".join(current))
          current = []
        else:
          current.append(line)
      records.append("\n".join(current))
    records = [r.strip() for r in records if r.strip()]
    texts += records
    labels += [entry] * len(records)
  return texts, labels


def _read(path: str) -> str:
  with open(path, "rb") as f:
    return f.read().decode("utf-8", errors="replace")


def _read_jsonl(path, text_column, label_column):
  texts, labels = [], []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      _check_columns(row, path, number, text_column, label_column)
      texts.append(str(row[text_column]))
      labels.append(str(row[label_column]))
  return texts, labels


def _read_table(path, text_column, label_column):
  texts, labels = [], []
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
    for number, row in enumerate(reader, 2):
      _check_columns(row, path, number, text_column, label_column)
      texts.append(row[text_column])
      labels.append(row[label_column])
  return texts, labels


def _check_columns(row: Mapping[str, Any], path: str, number: int, text_column: str,
                   label_column: str) -> None:
  missing = [c for c in (text_column, label_column) if c not in row]
  if missing:
    raise ConfigError(
        f"{path}, line {number}: no column {missing} (it has {sorted(row)}). Set "
        "config.data.text_column and config.data.label_column to the right names.")


class ByteTokenizer:
  """UTF-8 bytes past the four special ids; the zero-setup default."""
  vocab_size, pad_id = BYTE_VOCAB, PAD

  def encode(self, texts: Sequence[str], seq_len: int) -> tuple[np.ndarray, int]:
    out = np.full((len(texts), seq_len), PAD, np.int32)
    cut = 0
    for i, ids in enumerate(self.ids(texts)):
      if len(ids) > seq_len:  # (a cut text keeps its [SEP])
        cut += 1
        ids = np.concatenate([ids[:seq_len - 1], [SEP]])
      out[i, :len(ids)] = ids
    return out, cut

  def ids(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Each text whole, [CLS] bytes... [SEP]."""
    return [np.concatenate([[CLS], np.frombuffer(text.encode("utf-8"), np.uint8)
                            .astype(np.int32) + BYTE_OFFSET, [SEP]]) for text in texts]


class FileTokenizer:
  """A Hugging Face tokenizer (`tokenizers.Tokenizer`): read from a tokenizer.json, or
  trained here."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.vocab_size = self.tokenizer.get_vocab_size()
    pad = next((t for t in ("[PAD]", "<pad>", "<|endoftext|>")
                if self.tokenizer.token_to_id(t) is not None), None)
    self.pad_id = self.tokenizer.token_to_id(pad) if pad else 0

  @classmethod
  def from_file(cls, path: str) -> "FileTokenizer":
    from tokenizers import Tokenizer
    if not os.path.isfile(path):
      raise ConfigError(f"config.data.tokenizer={path!r}: no such tokenizer.json (or use "
                        '"bytes", "wordpiece:N" or "bpe:N").')
    return cls(Tokenizer.from_file(path))

  def to_str(self) -> str:
    return self.tokenizer.to_str()

  def encode(self, texts: Sequence[str], seq_len: int) -> tuple[np.ndarray, int]:
    out = np.full((len(texts), seq_len), self.pad_id, np.int32)
    cut = 0
    for i, ids in enumerate(self.ids(texts)):
      cut += len(ids) > seq_len
      ids = ids[:seq_len]
      out[i, :len(ids)] = ids
    return out, cut

  def ids(self, texts: Sequence[str]) -> list[list[int]]:
    """Each text whole, with its template's special tokens."""
    # encode_batch_fast skips the character offsets (unused here): a fifth faster.
    encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
    return [item.ids for item in encode(list(texts))]


SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-3, as the byte tokenizer's


def train_tokenizer(spec: str, texts: Sequence[str]) -> FileTokenizer:
  """"wordpiece:N" or "bpe:N" trained on `texts`, encoding each as [CLS] ... [SEP]. (The
  `tokenizers` library does the work; bigjax only fixes the special ids, so masked-LM
  masking and padding treat every tokenizer alike.)"""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
  from tokenizers import trainers
  kind, _, size = spec.partition(":")
  if kind not in ("wordpiece", "bpe") or not size.isdigit() or int(size) < 260:
    raise ConfigError(f'config.data.tokenizer="{spec}": use "bytes", "wordpiece:N" or '
                      '"bpe:N" with N >= 260 (e.g. "wordpiece:4096"), or the path of a '
                      "tokenizer.json.")
  if kind == "wordpiece":
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=int(size), show_progress=False,
                                        special_tokens=SPECIAL_TOKENS + ["[UNK]"])
  else:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(size), show_progress=False,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(texts, trainer)
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)])
  return FileTokenizer(tokenizer)


def tokenizer_for(spec: str, training_texts: Sequence[str] = ()):
  """The tokenizer `config.data.tokenizer` names; a trained one learns `training_texts`."""
  if spec in ("", "bytes"):
    return ByteTokenizer()
  if spec.startswith(("wordpiece:", "bpe:")):
    return train_tokenizer(spec, training_texts)
  return FileTokenizer.from_file(os.path.expanduser(spec))


def pack(texts: Sequence[str], tokenizer, seq_len: int) -> np.ndarray:
  """int32 tokens [ceil(total / seq_len), seq_len]: every text encoded whole, the texts end
  to end in their order, cut every seq_len tokens; only the last row is padded. A row may
  start inside a text and hold the end of one and the start of the next, so rows have no
  class: for masked-LM pre-training, where a row is its own target."""
  if seq_len < 1:
    raise ConfigError(f"config.data.seq_len must be positive; got {seq_len}.")
  pieces = [np.asarray(ids, np.int32) for ids in tokenizer.ids(texts)]
  stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
  rows = -(-len(stream) // seq_len)
  out = np.full((rows * seq_len,), tokenizer.pad_id, np.int32)
  out[:len(stream)] = stream
  logging.info("%d texts (%d tokens) packed into %d rows of %d", len(texts), len(stream),
               rows, seq_len)
  return out.reshape(rows, seq_len)


def tokenize(texts: Sequence[str], tokenizer, seq_len: int) -> np.ndarray:
  """int32 tokens [N, seq_len]; logs how many texts were cut."""
  tokens, cut = tokenizer.encode(texts, seq_len)
  if cut:
    logging.info("%d of %d texts are longer than seq_len=%d tokens and were cut", cut,
                 len(texts), seq_len)
  return tokens
