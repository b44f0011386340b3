"""Long-tailed subsampling and label noise."""

import numpy as np
import pytest

from jaxloss import data

CIFAR10_TOTALS = {10: 20431, 50: 13996, 100: 12406, 200: 11203}
CIFAR100_TOTALS = {10: 19573, 50: 12608, 100: 10847, 200: 9502}


@pytest.mark.parametrize("imbalance_factor", [10, 50, 100, 200])
def test_cifar_lt_totals(imbalance_factor):
    c10 = data.long_tailed_counts(5000, 10, imbalance_factor=imbalance_factor)
    c100 = data.long_tailed_counts(500, 100, imbalance_factor=imbalance_factor)
    assert c10.sum() == CIFAR10_TOTALS[imbalance_factor]
    assert c100.sum() == CIFAR100_TOTALS[imbalance_factor]
    assert c10[0] == 5000 and c10[-1] == 5000 // imbalance_factor
    assert np.all(np.diff(c100) <= 0)


def test_cifar_lt_lists_and_step_totals():
    got = data.long_tailed_counts(5000, 10, imbalance_factor=50).tolist()
    assert got == [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    assert data.long_tailed_counts(500, 100, imbalance_factor=200)[:5].tolist() == [
        500,
        473,
        449,
        425,
        403,
    ]
    step = {10: 27500, 50: 25500, 100: 25250, 200: 25125}
    for imbalance_factor, total in step.items():
        counts = data.long_tailed_counts(5000, 10, imbalance_factor=imbalance_factor, kind="step")
        assert counts.sum() == total
    assert data.long_tailed_counts(500, 100, imbalance_factor=200, kind="step").sum() == 25100


def test_counts_errors():
    with pytest.raises(ValueError, match="kind"):
        data.long_tailed_counts(10, 3, imbalance_factor=2, kind="linear")
    with pytest.raises(ValueError, match="imbalance_factor"):
        data.long_tailed_counts(10, 3, imbalance_factor=0.5)


def _toy(n_per_class=50, num_classes=4):
    labels = np.repeat(np.arange(num_classes), n_per_class)
    features = np.arange(labels.size, dtype=np.float32)[:, None]
    return data.Dataset(features, labels, num_classes, tuple("abcd"[:num_classes]), "toy")


def test_long_tailed_subsamples_reproducibly():
    ds = _toy()
    lt = data.long_tailed(ds, imbalance_factor=10, seed=3)
    np.testing.assert_array_equal(
        data.class_counts(lt), data.long_tailed_counts(50, 4, imbalance_factor=10)
    )
    # Each kept feature really belongs to its label (the rows move together).
    np.testing.assert_array_equal(lt.features[:, 0] // 50, lt.labels)
    again = data.long_tailed(ds, imbalance_factor=10, seed=3)
    np.testing.assert_array_equal(lt.features, again.features)
    other = data.long_tailed(ds, imbalance_factor=10, seed=4)
    assert not np.array_equal(lt.features, other.features)
    # The kept examples of a class are a prefix of one seeded shuffle, whatever the factor.
    lt50 = data.long_tailed(ds, imbalance_factor=50, seed=3)
    assert set(lt50.features[lt50.labels == 1, 0]) <= set(lt.features[lt.labels == 1, 0])
    assert lt.metadata["imbalance_factor"] == 10 and lt.metadata["long_tail_kind"] == "exp"


def test_long_tailed_reference_rng():
    # Class 0 is shuffled first by a RandomState(seed), as the seeded reference does.
    ds = _toy(n_per_class=5000, num_classes=2)
    lt = data.long_tailed(ds, imbalance_factor=2, seed=0)
    expected = np.arange(5000)
    np.random.RandomState(0).shuffle(expected)
    np.testing.assert_array_equal(lt.features[:5000, 0], expected)


def test_long_tailed_digits_and_too_many():
    digits = data.load("digits", split="train")
    lt = data.long_tailed(digits, imbalance_factor=10, kind="step")
    counts = data.class_counts(lt)
    m = data.class_counts(digits).min()
    assert counts.tolist() == [m] * 5 + [int(m / 10)] * 5
    with pytest.raises(ValueError, match="has only"):
        data.long_tailed(digits, imbalance_factor=10, max_count=10_000)


def test_label_noise_effective_rate_and_blocks():
    labels = np.arange(100_000) % 100
    ds = data.Dataset(np.zeros((labels.size, 1)), labels, 100, tuple(map(str, range(100))), "t")
    noisy = data.with_label_noise(ds, rate=0.4, seed=1)
    eff = noisy.metadata["effective_noise_rate"]
    assert eff == pytest.approx(np.mean(noisy.labels != labels))
    assert eff == pytest.approx(0.8 * 0.4, abs=0.006)
    np.testing.assert_array_equal(noisy.labels // 5, labels // 5)  # stays in its block
    np.testing.assert_array_equal(data.class_counts(ds), np.full(100, 1000))
    assert data.with_label_noise(ds, rate=0.0).metadata["effective_noise_rate"] == 0.0
    again = data.with_label_noise(ds, rate=0.4, seed=1)
    np.testing.assert_array_equal(noisy.labels, again.labels)


def test_label_noise_partial_last_block_and_errors():
    labels = np.arange(7000) % 7
    ds = data.Dataset(np.zeros((7000, 1)), labels, 7, tuple("abcdefg"), "t")
    noisy = data.with_label_noise(ds, rate=1.0, block=5)
    assert noisy.labels.max() == 6 and set(noisy.labels[labels >= 5]) == {5, 6}
    with pytest.raises(ValueError, match="rate"):
        data.with_label_noise(ds, rate=1.5)


def test_dataset_validation():
    with pytest.raises(ValueError, match="labels must lie"):
        data.Dataset(np.zeros((2, 1)), np.array([0, 3]), 2, ("a", "b"), "t")
    with pytest.raises(ValueError, match="matching features"):
        data.Dataset(np.zeros((3, 1)), np.array([0, 1]), 2, ("a", "b"), "t")
    ds = data.Dataset(np.zeros((2, 1), np.float64), np.array([0, 1], np.int64), 2, ["a", "b"], "t")
    assert ds.features.dtype == np.float32 and ds.labels.dtype == np.int32 and ds.num_examples == 2


class _CountingSource(data.InMemorySource):
    """Counts feature reads, to show that the transforms read labels only."""

    reads = 0

    def _read(self, indices):
        type(self).reads += 1
        return super()._read(indices)


def test_transforms_on_a_source_match_the_in_memory_ones():
    ds = _toy(n_per_class=30)
    source = _CountingSource(ds)
    lt = data.with_label_noise(data.long_tailed(ds, imbalance_factor=10, seed=3), rate=0.5, seed=2)
    lt_source = data.with_label_noise(
        data.long_tailed(source, imbalance_factor=10, seed=3), rate=0.5, seed=2
    )
    assert _CountingSource.reads == 0 and isinstance(lt_source, data.Source)
    np.testing.assert_array_equal(lt_source.labels, lt.labels)
    batch = lt_source.read(np.arange(len(lt_source)))
    assert _CountingSource.reads == 1
    np.testing.assert_array_equal(batch["features"], lt.features)
    np.testing.assert_array_equal(batch["labels"], lt.labels)
    assert lt_source.name == lt.name and lt_source.metadata == lt.metadata
    np.testing.assert_array_equal(data.class_counts(lt_source), data.class_counts(lt))


def test_transforms_on_streamed_labels(tmp_path):
    ds = _toy(n_per_class=20)
    path = str(tmp_path / "toy.array_record")
    data.write_array_record(path, ds.features, ds.labels)
    source = data.ArrayRecordSource(
        path, feature_shape=(1,), feature_dtype=np.float32, num_classes=4, name="toy"
    )
    lt = data.long_tailed(ds, imbalance_factor=4, kind="step", seed=1)
    lt_source = data.long_tailed(source, imbalance_factor=4, kind="step", seed=1)
    np.testing.assert_array_equal(
        lt_source.read(np.arange(len(lt_source)))["features"], lt.features
    )
    noisy = data.with_label_noise(lt_source, rate=1.0, block=2, seed=5)
    np.testing.assert_array_equal(
        noisy[3]["labels"], data.with_label_noise(lt, rate=1.0, block=2, seed=5).labels[3]
    )
