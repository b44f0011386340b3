"""Logs: JSON lines, TensorBoard events that read back as scalars, and silence off process 0."""

import json
import struct
import sys

import jax
import numpy as np
from tensorboardX.proto.event_pb2 import Event

from jaxloss.training import logs


def _events(logdir):
    """The Event protos of the one event file in ``logdir``, unframed from TFRecord."""
    (path,) = logdir.iterdir()
    data = path.read_bytes()
    events, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
        offset += 16 + length  # length, its CRC, the record, its CRC
    assert offset == len(data)
    return events


def test_metric_logger_writes_json_lines_and_per_seed_scalars(tmp_path):
    logger = logs.MetricLogger(str(tmp_path), history=[{"epoch": 0, "a": np.array([1.0, 2.0])}])
    logger.write({"epoch": 1, "a": np.array([3.0, 4.0]), "per_class": np.ones((2, 3)), "name": "x"})
    logger.write({"epoch": 300_000, "a": np.array([0.25, 0.75], np.float32)})
    logger.close()
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert lines == [
        {"epoch": 0, "a": [1.0, 2.0]},
        {"epoch": 1, "a": [3.0, 4.0], "per_class": [[1.0] * 3] * 2, "name": "x"},
        {"epoch": 300_000, "a": [0.25, 0.75]},
    ]
    events = _events(tmp_path / "tensorboard")
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert scalars == [
        (1, "a/seed_0", 3.0),
        (1, "a/seed_1", 4.0),
        (300_000, "a/seed_0", 0.25),
        (300_000, "a/seed_1", 0.75),
    ]


def test_json_lines_are_on_disk_after_each_write_before_close(tmp_path):
    # A run killed between epochs must find every logged epoch when it resumes.
    logger = logs.MetricLogger(tmp_path, history=[{"epoch": 0}])
    logger.write({"epoch": 1})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 0}\n{"epoch": 1}\n'
    logger.close()


def test_processes_other_than_0_write_nothing_and_show_no_bar(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with logs.progress_bar(3, epoch=0, num_epochs=1, enabled=True) as bar:
        assert not bar.disable
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with logs.progress_bar(3, epoch=0, num_epochs=1, enabled=True) as bar:
        assert bar.disable
    logger = logs.MetricLogger(str(tmp_path), history=[{"epoch": 0, "a": np.array([1.0])}])
    logger.write({"epoch": 1, "a": np.array([2.0])})
    logger.close()
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_events_can_be_left_out(tmp_path):
    logger = logs.MetricLogger(tmp_path, tensorboard=False)
    logger.write({"epoch": 0, "loss": np.array([0.5])})
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text().startswith('{"epoch": 0')
    assert not (tmp_path / "tensorboard").exists()
