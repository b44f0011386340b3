"""Accuracy metrics against float64 NumPy brute force and scikit-learn."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxloss import metrics
from tests import testing


def topk_hits_reference(logits, labels, k):
    """Brute force: the label is a hit iff fewer than k scores beat it strictly."""
    logits = np.asarray(logits, np.float64)
    hits = np.zeros(labels.shape)
    for index in np.ndindex(labels.shape):
        row = logits[index]
        hits[index] = float(np.sum(row > row[labels[index]]) < k)
    return hits


def macro_reference(values, labels, mask=None):
    """Mean over present classes of the per-class mean of ``values``, by loops."""
    if mask is None:
        mask = np.ones(labels.shape, bool)
    per_class = []
    for c in np.unique(labels[mask]):
        chosen = mask & (labels == c)
        per_class.append(np.mean(values[chosen]))
    return np.mean(per_class)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_topk_accuracy_matches_sklearn_and_brute_force(k):
    logits = testing.random_logits(0, (200, 7))
    labels = testing.random_labels(0, (200,), 7)
    got = np.asarray(metrics.topk_accuracy(jnp.asarray(logits, jnp.float32), labels, k=k))
    np.testing.assert_array_equal(got, topk_hits_reference(logits, labels, k))
    want = skm.top_k_accuracy_score(labels, logits, k=k, labels=np.arange(7))
    np.testing.assert_allclose(got.astype(np.float64).mean(), want, rtol=1e-12)


def test_topk_accuracy_ties_count_in_the_labels_favour():
    logits = jnp.array([[1.0, 1.0, 1.0, 0.0], [2.0, 1.0, 1.0, 1.0], [2.0, 2.0, 1.0, 1.0]])
    labels = jnp.array([2, 3, 2])
    np.testing.assert_array_equal(metrics.topk_accuracy(logits, labels, k=1), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(metrics.topk_accuracy(logits, labels, k=2), [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(metrics.topk_accuracy(logits, labels, k=3), [1.0, 1.0, 1.0])


def test_topk_accuracy_axis_batch_dims_and_dtypes():
    logits = testing.random_logits(1, (3, 5, 4), dtype=np.float32)
    labels = testing.random_labels(1, (3, 4), 5)
    got = metrics.topk_accuracy(logits, labels, k=2, axis=1)
    want = topk_hits_reference(np.moveaxis(logits, 1, -1), labels, 2)
    np.testing.assert_array_equal(got, want)
    chex.assert_type(got, jnp.float32)
    bf16 = metrics.topk_accuracy(jnp.asarray(logits, jnp.bfloat16), labels, k=2, axis=1)
    chex.assert_type(bf16, jnp.float32)
    with jax.enable_x64(True):
        chex.assert_type(
            metrics.topk_accuracy(np.float64(logits), labels, k=2, axis=1), jnp.float64
        )


def test_topk_accuracy_nan_score_and_out_of_range_labels_are_misses():
    logits = jnp.array([[jnp.nan, 0.0, 1.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    got = metrics.topk_accuracy(logits, jnp.array([0, 3, -1]), k=3)
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0])


def test_topk_accuracy_jit_and_vmap():
    logits = testing.random_logits(2, (4, 16, 6), dtype=np.float32)
    labels = testing.random_labels(2, (4, 16), 6)
    fn = functools.partial(metrics.topk_accuracy, k=2)
    eager = fn(logits, labels)
    chex.assert_trees_all_equal(jax.jit(fn)(logits, labels), eager)
    chex.assert_trees_all_equal(jax.vmap(fn)(logits, labels), eager)


@pytest.mark.parametrize("bad_k", [0, 7])
def test_topk_accuracy_rejects_k_out_of_range(bad_k):
    with pytest.raises(ValueError, match=r"k must be in \[1, 6\]"):
        metrics.topk_accuracy(jnp.zeros((2, 6)), jnp.zeros(2, jnp.int32), k=bad_k)


def test_topk_accuracy_rejects_bad_inputs():
    with pytest.raises(TypeError, match="k must be a Python int"):
        metrics.topk_accuracy(jnp.zeros((2, 6)), jnp.zeros(2, jnp.int32), k=2.0)
    with pytest.raises(ValueError, match="labels must have the logits' shape"):
        metrics.topk_accuracy(jnp.zeros((2, 6)), jnp.zeros(3, jnp.int32), k=2)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_per_class_recall_and_balanced_accuracy_match_sklearn():
    labels = testing.random_labels(3, (300,), 9)
    labels[labels == 4] = 5  # class 4 absent from the labels
    predictions = np.where(np.random.default_rng(3).random(300) < 0.6, labels, (labels + 4) % 9)
    recall = np.asarray(metrics.per_class_recall(predictions, labels, num_classes=9))
    want = skm.recall_score(labels, predictions, labels=np.arange(9), average=None, zero_division=0)
    assert np.isnan(recall[4])
    np.testing.assert_allclose(np.delete(recall, 4), np.delete(want, 4), rtol=1e-6)
    got = metrics.balanced_accuracy(predictions, labels, num_classes=9)
    np.testing.assert_allclose(got, skm.balanced_accuracy_score(labels, predictions), rtol=1e-6)


def test_balanced_accuracy_with_mask_equals_sklearn_on_the_kept_examples():
    labels = testing.random_labels(4, (8, 25), 5)
    predictions = testing.random_labels(5, (8, 25), 5)
    mask = np.random.default_rng(4).random((8, 25)) < 0.7
    got = metrics.balanced_accuracy(predictions, labels, num_classes=5, where=mask)
    want = skm.balanced_accuracy_score(labels[mask], predictions[mask])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_balanced_accuracy_ignores_classes_only_predicted_and_labels_out_of_range():
    predictions = jnp.array([0, 2, 2, 1, 1])
    labels = jnp.array([0, 0, 1, 1, 7])
    np.testing.assert_allclose(metrics.balanced_accuracy(predictions, labels, num_classes=3), 0.5)


def test_balanced_accuracy_without_examples_is_nan():
    labels = jnp.array([0, 1])
    got = metrics.balanced_accuracy(labels, labels, num_classes=2, where=jnp.array([False, False]))
    assert np.isnan(got)


def test_balanced_accuracy_jit_and_vmap():
    labels = testing.random_labels(6, (3, 40), 4)
    predictions = testing.random_labels(7, (3, 40), 4)
    fn = functools.partial(metrics.balanced_accuracy, num_classes=4)
    per_row = jax.vmap(fn)(predictions, labels)
    want = [skm.balanced_accuracy_score(y, p) for y, p in zip(labels, predictions, strict=True)]
    np.testing.assert_allclose(per_row, want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(predictions, labels), fn(predictions, labels))


def test_recall_rejects_bad_inputs():
    with pytest.raises(TypeError, match="predictions must be integer"):
        metrics.per_class_recall(jnp.zeros(3), jnp.zeros(3, jnp.int32), num_classes=2)
    with pytest.raises(ValueError, match="same shape"):
        metrics.per_class_recall(jnp.zeros(3, int), jnp.zeros(4, int), num_classes=2)
    with pytest.raises(TypeError, match="boolean per-example mask"):
        metrics.per_class_recall(
            jnp.zeros(3, int), jnp.zeros(3, int), num_classes=2, where=jnp.ones(3)
        )
    with pytest.raises(ValueError, match="does not broadcast"):
        metrics.per_class_recall(
            jnp.zeros(3, int), jnp.zeros(3, int), num_classes=2, where=jnp.ones(4, bool)
        )


@pytest.mark.parametrize("k", [1, 3])
def test_macro_topk_accuracy_matches_brute_force(k):
    logits = testing.random_logits(8, (400, 12))
    labels = np.minimum(testing.random_labels(8, (400,), 24), 11)  # long-tailed: class 11 heavy
    mask = np.random.default_rng(8).random(400) < 0.8
    got = metrics.macro_topk_accuracy(
        jnp.asarray(logits, jnp.float32), labels, k=k, num_classes=12, where=mask
    )
    hits = topk_hits_reference(logits, labels, k)
    np.testing.assert_allclose(got, macro_reference(hits, labels, mask), rtol=1e-6)


def test_macro_top1_is_balanced_accuracy_of_the_argmax():
    logits = testing.random_logits(9, (150, 6), dtype=np.float32)
    labels = testing.random_labels(9, (150,), 6)
    got = metrics.macro_topk_accuracy(logits, labels, k=1, num_classes=6)
    want = skm.balanced_accuracy_score(labels, logits.argmax(-1))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_macro_topk_accuracy_jit_vmap_and_num_classes_check():
    logits = testing.random_logits(10, (2, 30, 5), dtype=np.float32)
    labels = testing.random_labels(10, (2, 30), 5)
    fn = functools.partial(metrics.macro_topk_accuracy, k=2, num_classes=5)
    want = [
        macro_reference(topk_hits_reference(x, y, 2), y)
        for x, y in zip(logits, labels, strict=True)
    ]
    np.testing.assert_allclose(jax.vmap(fn)(logits, labels), want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(logits[0], labels[0]), want[0], rtol=1e-6)
    with pytest.raises(ValueError, match="num_classes=4 does not match the 5 classes"):
        metrics.macro_topk_accuracy(logits[0], labels[0], k=2, num_classes=4)
