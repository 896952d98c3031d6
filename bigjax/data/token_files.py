"""A language model's corpus tokenized once into a token file, read by position: the
training windows are cut as batches index them, so a corpus larger than memory trains
(config.data.source="tokens"; `python -m bench.make_records` writes the folder from a `text`
or `tfds_text` config, reading and tokenizing the corpus a chunk at a time).

A tokens folder holds `info.json`:

  {"format": "bigjax-tokens/1", "kind": "tokens", "dtype": "uint16", "top_token": 255,
   "tokenizer": "bytes" | "bpe:N" | "tokenizer.json",
   "splits": {"train": ["corpus.tokens", 0, 9000], "validation": [...], "test": [...]}}

each split a [start, stop) range of a flat file of tokens (raw `dtype` values, no header),
plus `tokenizer.json` for any tokenizer but bytes. Splits by position, as the `text` source
makes them (the held-out text is the end of the corpus), so the windows and their order are
those of the in-memory source (tested).

Nothing here imports jax: the reading runs in grain's worker processes too.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
from typing import Iterable, Iterator

import numpy as np

from bigjax.registry import ConfigError

logging = py_logging.getLogger(__name__)

FORMAT = "bigjax-tokens/1"
INFO = "info.json"
CHUNK_BYTES = 16 * 2 ** 20  # text encoded per call while writing
TOKENIZER_BYTES = 256 * 2 ** 20  # a trained tokenizer learns at most this much text


class TokenWindows:
  """Non-overlapping windows [N, seq_len] int32 of a token stream (a range of a token file),
  read only when indexed. Window i is stream[i * seq_len + shift:][:seq_len]: shift 0 gives
  a language model's inputs, shift 1 its next-token targets (text.windows' layout).

  Read with pread, not a memory map: on this kernel a map page-faults whole large folios
  in (about 1 MB of the file per window read at random), so a process that reads windows
  across a 4 GB file grows to 4 GB resident (measured: 1.6 GB after 1,600 windows). A read
  keeps the file in the kernel's page cache, reclaimable, and out of the process."""

  dtype = np.dtype(np.int32)
  ndim = 2

  def __init__(self, path: str, file_dtype: str, start: int, stop: int, seq_len: int,
               shift: int = 0, top_token: int = 0, rows: np.ndarray | None = None):
    self.path, self.file_dtype, self.start, self.stop = path, file_dtype, start, stop
    self.seq_len, self.shift, self.top_token = int(seq_len), int(shift), int(top_token)
    self.windows = (stop - start - 1) // self.seq_len
    self.rows = rows
    self._fd = None

  def __getstate__(self):
    return dict(self.__dict__, _fd=None)  # a worker opens the file itself

  def __del__(self):
    if getattr(self, "_fd", None) is not None:
      os.close(self._fd)

  def _read(self, offset: int, count: int) -> np.ndarray:
    """Tokens [offset, offset + count) of the file."""
    if self._fd is None:
      self._fd = os.open(self.path, os.O_RDONLY)
    size = np.dtype(self.file_dtype).itemsize
    buffer = bytearray(count * size)
    view, done = memoryview(buffer), 0
    while done < len(buffer):  # (one read returns at most 2 GB)
      n = os.preadv(self._fd, [view[done:]], offset * size + done)
      if n == 0:
        raise ConfigError(f"{self.path} ends before token {offset + count} that its "
                          "info.json counts: re-write the tokens folder.")
      done += n
    return np.frombuffer(buffer, self.file_dtype)

  def __len__(self) -> int:
    return len(self.rows) if self.rows is not None else self.windows

  @property
  def shape(self) -> tuple[int, int]:
    return (len(self), self.seq_len)

  def select(self, rows) -> "TokenWindows":
    """These windows' rows `rows`, still unread."""
    rows = np.arange(len(self))[rows]
    if self.rows is not None:
      rows = self.rows[rows]
    return TokenWindows(self.path, self.file_dtype, self.start, self.stop, self.seq_len,
                        self.shift, self.top_token, rows)

  def __getitem__(self, rows) -> np.ndarray:
    rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
    if self.rows is not None:
      rows = self.rows[rows]
    starts = (self.start + self.shift + rows.astype(np.int64) * self.seq_len).ravel()
    if not starts.size:
      return np.zeros((*rows.shape, self.seq_len), np.int32)
    low, high = int(starts.min()), int(starts.max()) + self.seq_len
    if high - low <= 4 * self.seq_len * starts.size:  # close together (an evaluation's
      span = self._read(low, high - low)               # consecutive windows): one read
      tokens = span[(starts - low)[:, None] + np.arange(self.seq_len)]
    else:
      tokens = np.stack([self._read(int(s), self.seq_len) for s in starts])
    return tokens.astype(np.int32).reshape(*rows.shape, self.seq_len)

  def __array__(self, dtype=None, copy=None):
    if self.rows is None:  # every window, in order: one read, no index arrays
      out = self._read(self.start + self.shift, len(self) * self.seq_len).astype(
          np.int32).reshape(len(self), self.seq_len)
    else:
      out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)


def read_info(folder: str) -> dict:
  path = os.path.join(folder, INFO)
  if not os.path.isdir(folder):
    raise ConfigError(f"{folder}: no such folder (config.data.path). A tokens folder is "
                      "written by python -m bench.make_records --config=<a text config> "
                      "--out=FOLDER.")
  if not os.path.isfile(path):
    raise ConfigError(f"{folder} has no {INFO}: not a tokens folder. python -m "
                      "bench.make_records --config=<a text config> --out=FOLDER writes one.")
  with open(path) as f:
    info = json.load(f)
  if info.get("format") != FORMAT:
    raise ConfigError(f"{path}: format {info.get('format')!r}, expected {FORMAT!r} (a "
                      "records folder of images or labelled texts is "
                      "config.data.source='array_record').")
  return info


def open_splits(folder: str, seq_len: int) -> tuple[dict, str | None, str]:
  """({split: (inputs, targets) TokenWindows}, the tokenizer.json text or None, the
  tokenizer it was written with: "bytes", "bpe:N" or a tokenizer.json's path)."""
  info = read_info(folder)
  splits = {}
  for name, (file, start, stop) in info["splits"].items():
    if stop - start < seq_len + 1:
      if name == "validation":  # (too little held out: no validation split, as in memory)
        continue
      raise ConfigError(f"The {name} split of {folder} holds {stop - start} tokens: no "
                        f"window of seq_len={seq_len} + 1. Use a shorter config.data.seq_len.")
    make = lambda shift: TokenWindows(os.path.join(folder, file), info["dtype"], start, stop,
                                      seq_len, shift, info["top_token"])
    splits[name] = (make(0), make(1))
  tokenizer = None
  if info["tokenizer"] != "bytes":
    with open(os.path.join(folder, "tokenizer.json")) as f:
      tokenizer = f.read()
  return splits, tokenizer, info["tokenizer"]


def safe_chunks(pieces: Iterable[bytes], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
  """The concatenated bytes of `pieces` again, cut into chunks of about chunk_bytes, each cut
  just after a newline between two non-space characters: there a byte-level pre-tokenizer
  (GPT-2's) makes the newline a word of its own, at a chunk's end too, so encoding the
  chunks one by one gives the tokens of the whole text (tested), and no UTF-8 character is
  cut. (A tokenizer.json of another kind may differ at the cuts, one every chunk_bytes.)"""
  buffer = b""
  for piece in pieces:
    buffer += piece
    while len(buffer) >= chunk_bytes:
      cut = _safe_cut(buffer, chunk_bytes)
      if cut is None:
        break
      yield buffer[:cut]
      buffer = buffer[cut:]
  if buffer:
    yield buffer


def _safe_cut(data: bytes, after: int) -> int | None:
  """The first position past `after` just after a newline that stands alone between two
  non-space characters ("a\nb"): whitespace is a word of its own there, cut or not."""
  i = data.find(b"\n", max(after - 1, 1))
  while i != -1 and i + 1 < len(data):
    if not data[i - 1:i].isspace() and not data[i + 1:i + 2].isspace():
      return i + 1
    i = data.find(b"\n", i + 1)
  return None


def write(folder: str, splits: dict[str, Iterable[np.ndarray]], tokenizer_spec: str,
          tokenizer_json: str | None) -> dict:
  """Writes each split's token arrays (in order) as one flat file and info.json; returns
  the info. Tokens are stored as uint16 when they fit (any vocabulary up to 65,536)."""
  os.makedirs(folder, exist_ok=True)
  file_dtype = "uint16" if tokenizer_json is None or _vocab(tokenizer_json) <= 2 ** 16 \
      else "int32"
  info = {"format": FORMAT, "kind": "tokens", "dtype": file_dtype, "top_token": 0,
          "tokenizer": "bytes" if tokenizer_json is None else tokenizer_spec, "splits": {}}
  path = os.path.join(folder, "corpus.tokens")
  count = 0
  with open(path + ".partial", "wb") as f:
    for name, arrays in splits.items():
      start = count
      for tokens in arrays:
        if len(tokens):
          info["top_token"] = max(info["top_token"], int(np.max(tokens)))
          f.write(np.asarray(tokens).astype(file_dtype).tobytes())
          count += len(tokens)
      info["splits"][name] = ["corpus.tokens", start, count]
  os.replace(path + ".partial", path)
  if tokenizer_json is not None:
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
      f.write(tokenizer_json)
  with open(os.path.join(folder, INFO), "w") as f:
    json.dump(info, f, indent=1)
  return info


def _vocab(tokenizer_json: str) -> int:
  from tokenizers import Tokenizer
  return Tokenizer.from_str(tokenizer_json).get_vocab_size()


def split_by_position(folder: str, info: dict, name: str, validation_fraction: float,
                      test_fraction: float) -> dict:
  """Splits split `name` into train, validation and test by position (text.split_by_position:
  the held-out tokens are its end), and rewrites info.json."""
  file, start, stop = info["splits"].pop(name)
  n = stop - start
  n_test, n_val = int(n * test_fraction), int(n * validation_fraction)
  train_end = start + n - n_test - n_val
  info["splits"] = {"train": [file, start, train_end],
                    "validation": [file, train_end, stop - n_test],
                    **({"test": [file, stop - n_test, stop]}
                       if test_fraction or "test" not in info["splits"] else {}),
                    **info["splits"]}
  with open(os.path.join(folder, INFO + ".partial"), "w") as f:
    json.dump(info, f, indent=1)
  os.replace(os.path.join(folder, INFO + ".partial"), os.path.join(folder, INFO))
  return info


def _file_pieces(paths: list[str], block: int) -> Iterator[bytes]:
  """The files' bytes, each ending in a newline (text.read_utf8's concatenation), a block at
  a time; a file that is not UTF-8 is an error naming it and the byte."""
  import codecs
  for path in paths:
    decoder = codecs.getincrementaldecoder("utf-8")()
    last, offset = b"\n", 0
    with open(path, "rb") as f:
      while data := f.read(block):
        try:
          decoder.decode(data)
        except UnicodeDecodeError as e:  # (e.start counts the bytes held from before too)
          at = max(e.start - len(decoder.getstate()[0]), 0)
          raise ConfigError(f"{path} is not UTF-8 text: byte {offset + at} "
                            f"(0x{data[at]:02x}) cannot be decoded ({e.reason}). Convert it "
                            "(e.g. iconv -t UTF-8) or leave it out.") from None
        yield data
        last, offset = data[-1:], offset + len(data)
    try:
      decoder.decode(b"", final=True)
    except UnicodeDecodeError:
      raise ConfigError(f"{path} is not UTF-8 text: it ends inside a character. Convert it "
                        "(e.g. iconv -t UTF-8) or leave it out.") from None
    if last != b"\n":
      yield b"\n"


def _size_with_newline(path: str) -> int:
  """The bytes a file adds to the corpus (a newline added where it does not end in one)."""
  size = os.path.getsize(path)
  if size:
    with open(path, "rb") as f:
      f.seek(size - 1)
      return size + (f.read(1) != b"\n")
  return 1


def _prefix(pieces: Iterable[bytes], size: int) -> bytes:
  """The first `size` bytes of the pieces, cut back to a whole UTF-8 character."""
  out = bytearray()
  for piece in pieces:
    out += piece[:size - len(out)]
    if len(out) >= size:
      break
  return bytes(out).decode("utf-8", "ignore").encode("utf-8")


def write_corpus(data_config, folder: str, chunk_bytes: int = CHUNK_BYTES) -> dict:
  """A `text` (file or folder) or `tfds_text` data config's corpus as a tokens folder, read
  and tokenized a chunk at a time (memory stays small whatever the corpus's size), split as
  that source splits it. Returns the info."""
  from bigjax.data import text
  spec = data_config.get("tokenizer", "bytes") or "bytes"
  val, test = float(data_config["validation_fraction"]), float(
      data_config.get("test_fraction", 0.1))
  if data_config["source"] == "tfds_text":
    if spec != "bytes":
      raise ConfigError(f'config.data.tokenizer="{spec}": a TFDS text corpus is byte '
                        'tokens ("bytes"), as its in-memory source reads it.')
    from bigjax.data import tfds_source
    read = lambda split: [tfds_source.load_tfds_text(
        data_config["name"], data_config[split], data_config["data_dir"] or None,
        data_config["download"])]
    streams = {"train": read("train_split"), "test": read("test_split")}
    tokenizer = None
    val, test = val, 0.0
  else:
    paths = text.text_files(data_config.get("path") or "")
    pieces = lambda: _file_pieces(paths, chunk_bytes)
    tokenizer = None
    if spec != "bytes":  # trained on the training text only, as the text source does
      total = sum(_size_with_newline(p) for p in paths)
      learn = min(int(total * (1 - (val + test))), TOKENIZER_BYTES)
      if learn < int(total * (1 - (val + test))):
        logging.info("the %s tokenizer learns the first %d MB of the training text", spec,
                     learn >> 20)
      tokenizer = text.build_tokenizer(spec, _prefix(pieces(), learn))
    streams = {"train": safe_chunks(pieces(), chunk_bytes)}
  encode = ((lambda chunk: np.frombuffer(chunk, np.uint8)) if tokenizer is None else
            (lambda chunk: text.encode_with(tokenizer, chunk.decode("utf-8"))))
  info = write(folder, {name: map(encode, chunks) for name, chunks in streams.items()}, spec,
               None if tokenizer is None else tokenizer.to_str())
  return split_by_position(folder, info, "train", val, test)
