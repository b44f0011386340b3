"""ArrayRecordSource misuse is named: labels out of range, truncated files, a shape or dtype that
the schema does not have, an empty split (issue 20, item 8)."""

import numpy as np
import pytest

from jaxloss import data


def _write(tmp_path, name="train", n=12, **kwargs):
    path = str(tmp_path / f"{name}.array_record")
    features = np.arange(n * 4, dtype=np.uint8).reshape(n, 4)
    labels = kwargs.pop("labels", np.arange(n) % 3)
    data.write_array_record(path, features, labels, **kwargs)
    return path, features


def test_labels_outside_the_classes_are_named_with_their_file(tmp_path):
    path, _ = _write(tmp_path, labels=[-1, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 0])
    source = data.ArrayRecordSource(path, feature_shape=(4,), num_classes=3)
    with pytest.raises(
        ValueError, match=r"label -1 of record 0 of .*train\.array_record is outside"
    ):
        source.read([0, 1])
    with pytest.raises(
        ValueError, match=r"label 4 of record 5 of .*train\.array_record is outside \[0, 3\)"
    ):
        source.read([2, 5])
    with pytest.raises(ValueError, match=r"label -1 of record 0"):
        source.labels  # noqa: B018 (the property reads every record)
    np.testing.assert_array_equal(source.read([1, 2])["labels"], [0, 1])  # good rows still read


def test_writer_refuses_labels_outside_num_classes_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"label 5 of example 2 is outside \[0, 3\)"):
        _write(tmp_path, labels=[0, 1, 5, 0], n=4, num_classes=3)
    assert not (tmp_path / "schema.json").exists()


def test_truncated_file_is_named(tmp_path):
    path, _ = _write(tmp_path, n=40)
    raw = open(path, "rb").read()
    for cut in (10, len(raw) // 2):
        with open(path, "wb") as f:
            f.write(raw[: len(raw) - cut])
        with pytest.raises(
            ValueError,
            match=r"train\.array_record cannot be read as an ArrayRecord file \(truncated or damaged\?\): RuntimeError",
        ):
            data.ArrayRecordSource(path, feature_shape=(4,), num_classes=3)


def test_wrong_feature_shape_or_dtype_is_refused_against_the_schema(tmp_path):
    path, features = _write(tmp_path, num_classes=3)
    with pytest.raises(
        ValueError,
        match=r"feature_shape=\[2, 2\] does not match .*: its schema\.json says feature_shape=\[4\]\.",
    ):
        data.ArrayRecordSource(path, feature_shape=(2, 2), num_classes=3)
    # Same byte size, other dtype: garbage without the schema, refused with it.
    with pytest.raises(
        ValueError,
        match=r"feature_shape=\[1\], feature_dtype=float32 does not match .* says feature_shape=\[4\], feature_dtype=uint8\.",
    ):
        data.ArrayRecordSource(path, feature_shape=(1,), feature_dtype=np.float32, num_classes=3)
    with pytest.raises(
        ValueError, match=r"^feature_dtype=int8 does not match .* says feature_dtype=uint8\."
    ):
        data.ArrayRecordSource(path, feature_shape=(4,), feature_dtype=np.int8, num_classes=3)
    with pytest.raises(ValueError, match=r"num_classes=4 does not match .*says num_classes=3\."):
        data.ArrayRecordSource(path, feature_shape=(4,), num_classes=4)
    # Without a schema a shape of another byte size is still named (not a reshape error).
    (tmp_path / "schema.json").unlink()
    with pytest.raises(
        ValueError, match=r"records of 4 feature bytes, but feature_shape=\(3,\) of uint8 needs 3"
    ):
        data.ArrayRecordSource(path, feature_shape=(3,), num_classes=3)
    source = data.ArrayRecordSource(path, feature_shape=(2, 2), num_classes=3)
    np.testing.assert_array_equal(source.read([3])["features"], features[3:4].reshape(1, 2, 2))


def test_a_replaced_file_with_fewer_records_than_the_schema_is_refused(tmp_path):
    path, _ = _write(tmp_path, n=12)
    schema = data.read_schema(str(tmp_path))
    _write(tmp_path, n=6)
    (tmp_path / "schema.json").write_text(__import__("json").dumps(schema))
    with pytest.raises(ValueError, match=r"holds 6 records where its schema\.json says 12"):
        data.ArrayRecordSource(path, feature_shape=(4,), num_classes=3)


def test_empty_split_says_so(tmp_path):
    path, _ = _write(tmp_path, n=0, labels=np.zeros(0, int))
    with pytest.raises(
        ValueError, match=r"train\.array_record holds no records: .* would be an empty split"
    ):
        data.ArrayRecordSource(path, feature_shape=(4,), num_classes=3)
    empty = data.ArraySource(
        np.zeros((0, 4), np.uint8), np.zeros(0, int), num_classes=3, name="empty"
    )
    with pytest.raises(
        ValueError, match=r"'empty' holds no examples: there is nothing to evaluate"
    ):
        data.eval_batches(empty, global_batch_size=4)
    with pytest.raises(ValueError, match=r"exceeds the 0 examples of 'empty'"):
        data.train_batches(empty, global_batch_size=4, seed=0)


def test_files_of_one_directory_must_agree(tmp_path):
    _write(tmp_path, "train", num_classes=3)
    with pytest.raises(
        ValueError, match=r"test\.array_record: feature_shape \[2\] differs from \[4\]"
    ):
        data.write_array_record(
            str(tmp_path / "test.array_record"), np.zeros((3, 2), np.uint8), [0, 1, 2]
        )
    assert not (tmp_path / "test.array_record").exists()
    assert set(data.read_schema(str(tmp_path))["splits"]) == {"train"}
