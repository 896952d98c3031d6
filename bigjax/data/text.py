"""Text for language models: byte-level tokens (no vocabulary to download), text files read
and checked as UTF-8, and fixed-length training windows packed from the byte stream."""

from __future__ import annotations

import os

import numpy as np

from bigjax.registry import ConfigError

VOCAB_SIZE = 256  # one token per byte
TEXT_EXTENSIONS = ("", ".txt", ".md", ".text")


def encode(text: str) -> np.ndarray:
  """UTF-8 bytes as int32 tokens."""
  return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(tokens) -> str:
  """Tokens back to text; a sequence cut inside a multi-byte character shows U+FFFD there."""
  return bytes(np.asarray(tokens, np.uint8).tolist()).decode("utf-8", errors="replace")


def build_tokenizer(spec: str, training_text: bytes):
  """A `tokenizers.Tokenizer`: "bpe:N" trains a byte-level BPE of N tokens on the training
  text (GPT-2's kind: every byte has a token, so any text encodes); a path loads a Hugging
  Face tokenizer.json (e.g. the one beside an imported checkpoint's weights)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  if spec.startswith("bpe:"):
    try:
      size = int(spec[4:])
    except ValueError:
      size = 0
    if size < 257:
      raise ConfigError(f'config.data.tokenizer="{spec}": use bpe:N with N > 256 (the 256 '
                        'bytes come first), e.g. "bpe:4096".')
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = training_text.decode("utf-8").splitlines(keepends=True)
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer
  path = os.path.expanduser(spec)
  if not os.path.isfile(path):
    raise ConfigError(f'config.data.tokenizer="{spec}": no such tokenizer.json. Use "bytes", '
                      '"bpe:N" (trained on the text), or the path of a tokenizer.json.')
  return Tokenizer.from_file(path)


def encode_with(tokenizer, text: str) -> np.ndarray:
  return np.asarray(tokenizer.encode(text).ids, np.int32)


def text_files(path: str) -> list[str]:
  """A file, or the text files of a folder (recursively, sorted; names without an extension
  or ending .txt/.md/.text; links, hidden files and other extensions are left out)."""
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise ConfigError(f"{path}: no such file or folder (config.data.path). Give a text file "
                      "or a folder of them (offline demo: apt-get install fortunes, then "
                      "--config.data.path=/usr/share/games/fortunes).")
  found = []
  for root, dirs, names in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      full = os.path.join(root, name)
      if (not name.startswith(".") and not os.path.islink(full)
          and os.path.splitext(name)[1].lower() in TEXT_EXTENSIONS):
        found.append(full)
  if not found:
    raise ConfigError(f"{path} holds no text files (names without an extension, or .txt, "
                      ".md, .text).")
  return found


def read_utf8(paths: list[str]) -> bytes:
  """The files' bytes, concatenated; a file that is not UTF-8 is an error naming the file
  and the byte offset."""
  chunks = []
  for path in paths:
    with open(path, "rb") as f:
      data = f.read()
    check_utf8(data, path)
    chunks.append(data if data.endswith(b"\n") else data + b"\n")
  return b"".join(chunks)


def check_utf8(data: bytes, where: str) -> None:
  """An error naming `where` and the first byte that is not UTF-8."""
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ConfigError(f"{where} is not UTF-8 text: byte {e.start} (0x{data[e.start]:02x}) "
                      f"cannot be decoded ({e.reason}). Convert it (e.g. iconv -t UTF-8) "
                      "or leave it out.") from None


def windows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs [N, seq_len], next-token targets [N, seq_len]) from non-overlapping windows of
  seq_len + 1 tokens (each window's last token is only a target)."""
  n = (len(stream) - 1) // seq_len
  if n < 1:
    raise ConfigError(f"{len(stream)} tokens make no window of seq_len={seq_len} + 1; use "
                      "more text or a shorter config.data.seq_len.")
  starts = np.arange(n) * seq_len
  index = starts[:, None] + np.arange(seq_len + 1)[None, :]
  chunk = stream[index]
  return chunk[:, :-1], chunk[:, 1:]


def split_by_position(stream: np.ndarray, validation_fraction: float, test_fraction: float):
  """(train, validation, test) streams: contiguous, in that order (the held-out text is
  the end of the corpus, never interleaved with training text)."""
  n = len(stream)
  n_test, n_val = int(n * test_fraction), int(n * validation_fraction)
  train_end = n - n_test - n_val
  return stream[:train_end], stream[train_end:n - n_test], stream[n - n_test:]
