"""TensorBoard event files of scalars, written without TensorFlow or protobuf.

An event file is a sequence of TFRecords (length, masked CRC32C of the length, data, masked
CRC32C of the data), each holding one `Event` protocol buffer. A scalar needs only a few
fields, encoded here by hand:
  Event   {1: wall_time (double), 2: step (int64), 3: file_version (string), 5: summary}
  Summary {1: repeated Value}
  Value   {1: tag (string), 2: simple_value (float)}
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Mapping


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint((number << 3) | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2, _varint(len(payload)) + payload)


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
  event = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    event += _length_delimited(3, file_version.encode())
  if scalars:
    values = b"".join(
        _length_delimited(1, _length_delimited(1, tag.encode())
                          + _field(2, 5, struct.pack("<f", float(value))))
        for tag, value in scalars.items())
    event += _length_delimited(5, values)
  return event


def record(data: bytes) -> bytes:
  """One TFRecord."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


class ScalarWriter:
  """Appends scalars to a fresh `events.out.tfevents.*` file in `logdir`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    self.path = os.path.join(
        logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.bigjax")
    with open(self.path, "ab") as f:
      f.write(record(encode_event(now, file_version="brain.Event:2")))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    values = {tag: v for tag, v in values.items() if isinstance(v, (int, float))}
    if values:
      with open(self.path, "ab") as f:
        f.write(record(encode_event(time.time(), step, scalars=values)))
