"""Logs: the TensorBoard writer's files parse as TFRecord-framed Event protos; JSON lines."""

import json
import struct

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from jaxloss.training import logs


def _event_class():
    """tensorflow.Event / Summary built from their field numbers, independent of the writer."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="t")
    value = file.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=f.TYPE_FLOAT, label=f.LABEL_OPTIONAL)
    summary = file.message_type.add(name="Summary")
    summary.field.add(
        name="value", number=1, type=f.TYPE_MESSAGE, type_name=".t.Value", label=f.LABEL_REPEATED
    )
    event = file.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=f.TYPE_DOUBLE, label=f.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    event.field.add(
        name="summary",
        number=5,
        type=f.TYPE_MESSAGE,
        type_name=".t.Summary",
        label=f.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def _records(path):
    with open(path, "rb") as file:
        data = file.read()
    records, offset = [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[offset + 8 : offset + 12])[0] == logs._masked_crc(header)
        record = data[offset + 12 : offset + 12 + length]
        crc = data[offset + 12 + length : offset + 16 + length]
        assert struct.unpack("<I", crc)[0] == logs._masked_crc(record)
        records.append(record)
        offset += 16 + length
    return records


def test_crc32c_matches_the_standard_check_values():
    assert logs.crc32c(b"123456789") == 0xE3069283
    assert logs.crc32c(b"") == 0
    assert logs.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def test_event_file_reads_back_as_tensorboard_events(tmp_path):
    writer = logs.EventWriter(str(tmp_path))
    writer.scalars(3, {"test/accuracy/seed_0": 0.25, "train/loss/seed_0": 1.5})
    writer.scalars(300_000, {"test/accuracy/seed_0": 0.75})
    writer.close()
    event_class = _event_class()
    events = [event_class.FromString(r) for r in _records(writer.path)]
    assert events[0].file_version == "brain.Event:2"
    assert [e.step for e in events[1:]] == [3, 300_000]
    assert {v.tag: v.simple_value for v in events[1].summary.value} == {
        "test/accuracy/seed_0": 0.25,
        "train/loss/seed_0": 1.5,
    }
    assert events[2].summary.value[0].simple_value == 0.75


def test_metric_logger_writes_json_lines_and_per_seed_scalars(tmp_path):
    logger = logs.MetricLogger(str(tmp_path), history=[{"epoch": 0, "a": np.array([1.0, 2.0])}])
    logger.write({"epoch": 1, "a": np.array([3.0, 4.0]), "per_class": np.ones((2, 3)), "name": "x"})
    logger.close()
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert lines == [
        {"epoch": 0, "a": [1.0, 2.0]},
        {"epoch": 1, "a": [3.0, 4.0], "per_class": [[1.0] * 3] * 2, "name": "x"},
    ]
    event_class = _event_class()
    (path,) = (tmp_path / "tensorboard").iterdir()
    last = event_class.FromString(_records(str(path))[-1])
    assert last.step == 1
    assert {v.tag: v.simple_value for v in last.summary.value} == {"a/seed_0": 3.0, "a/seed_1": 4.0}
