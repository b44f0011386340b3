"""Run logs: metrics as JSON lines, TensorBoard scalars without TensorFlow, and the progress bar.

TensorBoard reads TFRecord files of ``Event`` protocol buffers. A scalar event needs only five
protobuf fields, so this module encodes them by hand (with the masked CRC-32C that TFRecord
framing requires) instead of depending on TensorFlow or tensorboardX.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from collections.abc import Iterable, Mapping

import numpy as np
from tqdm.auto import tqdm

__all__ = ["EventWriter", "MetricLogger", "crc32c", "progress_bar"]


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord framing.

    Example:
      >>> hex(crc32c(b"123456789"))
      '0xe3069283'
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def _event(*, wall_time: float, step: int, file_version: str | None = None, summary=b"") -> bytes:
    # tensorflow.Event: wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5.
    message = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        message += _length_delimited(3, file_version.encode())
    if summary:
        message += _length_delimited(5, summary)
    return message


def _scalar_summary(scalars: Mapping[str, float]) -> bytes:
    # tensorflow.Summary: repeated Value value = 1; Value: tag = 1, simple_value = 2 (float).
    return b"".join(
        _length_delimited(
            1, _length_delimited(1, tag.encode()) + _field(2, 5, struct.pack("<f", v))
        )
        for tag, v in scalars.items()
    )


class EventWriter:
    """Appends scalar summaries to a TensorBoard event file in ``logdir``."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "ab")
        self._write(_event(wall_time=time.time(), step=0, file_version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self._file.write(header + struct.pack("<I", _masked_crc(header)))
        self._file.write(record + struct.pack("<I", _masked_crc(record)))

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Writes one event holding every ``tag: value`` of ``scalars`` at ``step``."""
        summary = _scalar_summary({k: float(v) for k, v in scalars.items()})
        self._write(_event(wall_time=time.time(), step=step, summary=summary))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _jsonable(value):
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


class MetricLogger:
    """Per-epoch metrics to ``workdir/metrics.jsonl`` and to TensorBoard (``workdir/tensorboard``).

    Array metrics (one value per seed) become lists in the JSON lines; TensorBoard gets one scalar
    per seed (``tag/seed_i``) and per-class arrays are left to the JSON lines.

    Args:
      workdir: the run directory.
      history: epochs already logged by an earlier, interrupted run; the JSON lines file is
        rewritten with exactly these, dropping any epoch logged after the last checkpoint.
    """

    def __init__(self, workdir: str, *, history: Iterable[Mapping] = ()):
        self.path = os.path.join(workdir, "metrics.jsonl")
        with open(self.path, "w") as file:
            for record in history:
                file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        self._events = EventWriter(os.path.join(workdir, "tensorboard"))

    def write(self, record: Mapping) -> None:
        """Logs one epoch's record (it must hold an integer ``"epoch"``)."""
        with open(self.path, "a") as file:
            file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        scalars = {}
        for key, value in record.items():
            values = np.atleast_1d(np.asarray(value))
            if key == "epoch" or values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
                continue
            for seed, v in enumerate(values):
                scalars[f"{key}/seed_{seed}"] = v
        self._events.scalars(int(record["epoch"]), scalars)

    def close(self) -> None:
        self._events.close()


def progress_bar(total: int, *, epoch: int, num_epochs: int, enabled: bool) -> tqdm:
    """A tqdm bar over one epoch's steps, shown only when asked and stderr is a terminal."""
    return tqdm(
        total=total,
        desc=f"epoch {epoch + 1}/{num_epochs}",
        unit="step",
        leave=False,
        disable=not (enabled and sys.stderr.isatty()),
    )
