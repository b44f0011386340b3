"""Sharded evaluation: per-batch sufficient statistics, summed, give the metrics of the whole split."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxloss import metrics
from jaxloss.training import evaluation
from tests import testing

NUM_CLASSES, K = 6, 2


def _split():
    logits = jnp.asarray(testing.random_logits(0, (50, NUM_CLASSES), scale=2.0), jnp.float32)
    labels = jnp.asarray(testing.random_labels(0, (50,), NUM_CLASSES - 1))  # class 5 absent
    return logits, labels


def test_summed_batch_statistics_give_the_metrics_of_the_whole_split():
    logits, labels = _split()
    statistics = jax.jit(evaluation.metric_statistics, static_argnames=("num_classes", "k"))
    total = None
    for start in range(0, 50, 16):  # uneven batches, the last one padded with a mask
        z, y = logits[start : start + 16], labels[start : start + 16]
        pad = 16 - len(y)
        mask = jnp.arange(16) < len(y)
        z, y = jnp.pad(z, ((0, pad), (0, 0))), jnp.pad(y, (0, pad), constant_values=99)
        part = statistics(z, y, mask, num_classes=NUM_CLASSES, k=K)
        total = part if total is None else jax.tree.map(jnp.add, total, part)
    got = evaluation.metrics_from_statistics(jax.device_get(total), k=K)
    predictions = jnp.argmax(logits, -1)
    want = {
        "accuracy": np.mean(predictions == labels),
        "top2_accuracy": np.mean(metrics.topk_accuracy(logits, labels, k=K)),
        "balanced_accuracy": metrics.balanced_accuracy(
            predictions, labels, num_classes=NUM_CLASSES
        ),
        "macro_top2_accuracy": metrics.macro_topk_accuracy(
            logits, labels, k=K, num_classes=NUM_CLASSES
        ),
        "ece": metrics.expected_calibration_error(jax.nn.softmax(logits), labels, n_bins=15),
        "nll": np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)),
        "per_class_recall": metrics.per_class_recall(predictions, labels, num_classes=NUM_CLASSES),
    }
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    assert np.isnan(got["per_class_recall"][5])  # an absent class is left out, as sklearn


def test_metric_table_gives_names_and_directions():
    assert evaluation.metric_names(3) == [
        "accuracy", "top3_accuracy", "balanced_accuracy", "macro_top3_accuracy", "ece", "nll",
    ]  # fmt: skip
    assert evaluation.higher_is_better("top7_accuracy") and not evaluation.higher_is_better("nll")
    with pytest.raises(ValueError, match="Unknown metric 'f1'"):
        evaluation.higher_is_better("f1")
