"""Evaluation: the metric table, each batch's sufficient statistics, and their reduction to metrics.

A split's metrics are sums over its batches (per-class counts, calibration bins, summed NLL), added
inside the compiled step across devices and hosts, so that no host ever holds a split's logits;
:func:`metrics_from_statistics` turns the sums into the metrics of :data:`METRICS`.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import data, metrics
from jaxloss.losses import cross_entropy_loss
from jaxloss.training import distributed

__all__ = [
    "METRICS",
    "NUM_BINS",
    "SPLITS",
    "evaluate",
    "higher_is_better",
    "metric_names",
    "metric_statistics",
    "metrics_from_statistics",
    "unstack_bins",
]

#: Every evaluation metric and whether higher is better: the one table that model selection,
#: tuning, logs and reports read. ``{k}`` stands for the top-k cut-off.
METRICS = {
    "accuracy": True,
    "top{k}_accuracy": True,
    "balanced_accuracy": True,
    "macro_top{k}_accuracy": True,
    "ece": False,
    "nll": False,
}

#: ECE bins of the evaluation (the seeds' protocol).
NUM_BINS = 15

#: The splits every epoch is evaluated on (selection reads validation only).
SPLITS = ("validation", "test")


def metric_names(k: int) -> list[str]:
    """The scalar metrics of an evaluation for a top-k cut-off of ``k``.

    Example:
      >>> metric_names(5)
      ['accuracy', 'top5_accuracy', 'balanced_accuracy', 'macro_top5_accuracy', 'ece', 'nll']
    """
    return [name.format(k=k) for name in METRICS]


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` (e.g. ``"top2_accuracy"``) is better.

    Example:
      >>> higher_is_better("top2_accuracy"), higher_is_better("nll")
      (True, False)
    """
    pattern = re.sub(r"top\d+_", "top{k}_", name)
    if pattern not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; the metrics are {', '.join(METRICS)}.")
    return METRICS[pattern]


def metric_statistics(
    logits: jax.Array, labels: jax.Array, where: jax.Array, *, num_classes: int, k: int
) -> dict[str, jax.Array]:
    """Sufficient statistics of every metric on one batch: sums, merged across batches, devices and
    hosts by adding, so that no host ever holds a split's logits.

    Args:
      logits: (N, C) scores.
      labels: (N,) integer labels.
      where: (N,) boolean mask of the examples that count (False: padding).
      num_classes: C.
      k: the top-k cut-off (clipped to C).

    Returns:
      ``count``, ``correct`` and ``topk`` per class (C,), ``nll`` (the summed cross-entropy) and
      ``bins`` (3, NUM_BINS): the calibration bins' counts, confidence sums and correct sums.

    Example:
      Two batches' statistics, added, give the metrics of the four examples
      (:func:`metrics_from_statistics`): predictions 0, 1, 2, 0 for labels 0, 1, 1, 2.

      >>> import jax, jax.numpy as jnp
      >>> logits = jnp.array([[2.0, 1, 0], [0, 2, 1], [1, 0, 2], [2, 0, 1]])
      >>> labels, where = jnp.array([0, 1, 1, 2]), jnp.ones(4, bool)
      >>> halves = [
      ...     metric_statistics(logits[i : i + 2], labels[i : i + 2], where[i : i + 2],
      ...                       num_classes=3, k=2)
      ...     for i in (0, 2)
      ... ]
      >>> result = metrics_from_statistics(jax.tree.map(jnp.add, *halves), k=2)
      >>> float(result["accuracy"]), float(result["top2_accuracy"]), result["per_class_recall"].tolist()
      (0.5, 0.75, [1.0, 0.5, 0.0])
    """
    k = min(k, num_classes)
    weights = where.astype(jnp.float32)
    labels = jnp.where(where, labels, 0)  # padding rows may hold anything

    def per_class(values):
        return jax.ops.segment_sum(weights * values, labels, num_classes)

    predictions = jnp.argmax(logits, axis=-1)
    bins = metrics.calibration_bins(
        jax.nn.softmax(logits, axis=-1), labels, n_bins=NUM_BINS, where=where
    )
    return {
        "count": per_class(jnp.ones_like(weights)),
        "correct": per_class((predictions == labels).astype(jnp.float32)),
        "topk": per_class(metrics.topk_accuracy(logits, labels, k=k)),
        "nll": jnp.sum(weights * cross_entropy_loss(logits, labels)),
        "bins": jnp.stack([jnp.asarray(b, jnp.float32) for b in bins]),
    }


def unstack_bins(bins: Any) -> metrics.CalibrationBins:
    """``bins`` of :func:`metric_statistics` (..., 3, NUM_BINS) as
    :class:`~jaxloss.metrics.CalibrationBins` (e.g. for :func:`jaxloss.metrics.reliability_diagram`).

    Example:
      >>> import numpy as np
      >>> bins = unstack_bins(np.zeros((4, 3, NUM_BINS)))  # four models' bins
      >>> bins.count.shape, bins.correct_sum.shape
      ((4, 15), (4, 15))
    """
    bins = np.asarray(bins)
    return metrics.CalibrationBins(bins[..., 0, :], bins[..., 1, :], bins[..., 2, :])


def metrics_from_statistics(statistics: dict[str, Any], *, k: int) -> dict[str, np.ndarray]:
    """The metrics of :data:`METRICS` (and ``per_class_recall``) from summed statistics.

    Args:
      statistics: :func:`metric_statistics` summed over batches, with any leading axes (models).
      k: the top-k cut-off of the names (already clipped to the number of classes).

    Returns:
      Each metric with the statistics' leading axes; ``per_class_recall`` (..., C), NaN for a
      class without examples, which the balanced and macro metrics leave out (as sklearn).
    """
    s = {name: np.asarray(value, np.float64) for name, value in statistics.items()}
    count = s["count"]
    total = count.sum(axis=-1)
    present = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, s["correct"] / count, np.nan)
        topk_recall = np.where(present, s["topk"] / count, np.nan)
        return {
            "accuracy": s["correct"].sum(axis=-1) / total,
            f"top{k}_accuracy": s["topk"].sum(axis=-1) / total,
            "balanced_accuracy": np.nanmean(recall, axis=-1),
            f"macro_top{k}_accuracy": np.nanmean(topk_recall, axis=-1),
            "ece": np.asarray(metrics.ece_from_bins(unstack_bins(s["bins"]))),
            "nll": s["nll"] / total,
            "per_class_recall": recall,
        }


def evaluate(steps, state, splits, *, batch_size, k) -> tuple[dict, dict]:
    """Metrics of every model on validation and test, and each split's calibration bins.

    Each batch's statistics are summed inside the compiled step (``steps.evaluate`` of
    :func:`jaxloss.training.train.make_steps`) over the devices (and hosts); the host only adds
    the small per-batch sums, never holding a split's logits.
    """
    record, bins = {}, {}
    for split in SPLITS:
        total = None
        # Each host reads its rows of every global batch.
        for batch in data.eval_batches(splits[split], global_batch_size=batch_size):
            statistics = steps.evaluate(state, data.global_batch(batch, steps.eval_sharding))
            distributed.keep_in_step(statistics)  # as in training: no process runs ahead
            total = statistics if total is None else jax.tree.map(jnp.add, total, statistics)
        total = jax.device_get(total)
        for name, value in metrics_from_statistics(total, k=k).items():
            record[f"{split}/{name}"] = value
        bins[f"{split}/bins"] = np.asarray(total["bins"], np.float64)
    return record, bins
