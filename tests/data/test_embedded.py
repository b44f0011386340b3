"""Embedded datasets: shapes, split determinism and stratification, train-only standardization."""

import numpy as np
import pytest

from jaxloss import data
from jaxloss.data._embedded import _raw, stratified_split

SPLITS = ("train", "validation", "test")
SHAPES = {
    "digits": ((8, 8, 1), 10),
    "iris": ((4,), 3),
    "wine": ((13,), 3),
    "breast_cancer": ((30,), 2),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_dtypes_and_partition(name):
    shape, num_classes = SHAPES[name]
    parts = [data.load(name, split=s, seed=3) for s in SPLITS]
    total = len(_raw(name)[1])
    assert sum(p.num_examples for p in parts) == total
    for p in parts:
        assert p.features.shape[1:] == shape and p.features.dtype == np.float32
        assert p.labels.dtype == np.int32 and p.num_classes == num_classes
        assert len(p.class_names) == num_classes
    # The split indices partition range(N).
    idx = stratified_split(_raw(name)[1], seed=3)
    np.testing.assert_array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(total))


def test_split_is_deterministic_by_seed():
    a = data.load("wine", split="validation", seed=5)
    b = data.load("wine", split="validation", seed=5)
    c = data.load("wine", split="validation", seed=6)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.features, c.features)


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_split_is_stratified(name):
    _, labels, _ = _raw(name)
    overall = np.bincount(labels) / len(labels)
    for split, fraction in zip(SPLITS, (0.6, 0.2, 0.2), strict=True):
        ds = data.load(name, split=split, seed=1)
        counts = data.class_counts(ds)
        np.testing.assert_allclose(counts / ds.num_examples, overall, atol=0.01)
        # Per class, within one example of the exact fraction.
        np.testing.assert_array_less(np.abs(counts - fraction * np.bincount(labels)), 1.0 + 1e-9)


def test_standardization_uses_train_statistics_only():
    raw, labels, _ = _raw("breast_cancer")
    parts = stratified_split(labels, seed=2)
    mean, std = raw[parts["train"]].mean(0), raw[parts["train"]].std(0)
    train = data.load("breast_cancer", split="train", seed=2)
    test = data.load("breast_cancer", split="test", seed=2)
    np.testing.assert_allclose(train.features.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.features.std(0), 1.0, atol=1e-4)
    np.testing.assert_allclose(
        test.features, (raw[parts["test"]] - mean) / std, rtol=1e-5, atol=1e-5
    )
    # Statistics fitted on test would differ: the test split is not itself standardized.
    assert np.abs(test.features.mean(0)).max() > 0.05


def test_digits_pixels_scaled_then_standardized_globally():
    ds = data.load("digits", split="train")
    meta = ds.metadata
    assert np.ndim(meta["standardize_mean"]) == 0
    raw, _, _ = _raw("digits")
    assert raw.max() == 1.0  # pixels divided by 16
    assert abs(ds.features.mean()) < 1e-5 and abs(ds.features.std() - 1.0) < 1e-4
    assert ds.class_names == tuple(str(i) for i in range(10))


def test_unknown_name_and_split_errors():
    with pytest.raises(ValueError, match="available: digits, iris.*cifar10"):
        data.load("imagenet", split="train")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("digits", split="val")
    assert "svhn_cropped" in data.available_datasets()
