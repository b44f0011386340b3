"""Accuracy metrics: top-k accuracy, per-class recall, balanced and macro-average top-k accuracy."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _validation
from jaxloss._classes import WHOLE

__all__ = [
    "balanced_accuracy",
    "macro_topk_accuracy",
    "per_class_recall",
    "topk_accuracy",
]


def topk_accuracy(logits: Any, labels: Any, *, k: int, axis: int = -1) -> jax.Array:
    r"""Per-example top-k accuracy: 1 if the label's score is among the ``k`` largest, else 0.

    .. math::
      \mathrm{hit}_i = \big[\, |\{c : s_{ic} > s_{iy_i}\}| < k \,\big]

    Ties are resolved in the label's favour: the label counts as in the top-k iff fewer than ``k``
    scores are strictly greater than its own. (``sklearn.metrics.top_k_accuracy_score`` breaks ties
    by class index instead; the two agree whenever the scores are distinct.) A NaN label score and
    a label outside ``[0, num_classes)`` give 0.

    Args:
      logits: float scores (logits or probabilities), shape ``(..., num_classes)`` with the classes
        along ``axis``.
      labels: integer labels, the logits' shape without ``axis``.
      k: how many of the largest scores count as a hit, in ``[1, num_classes]``.
      axis: the class axis of ``logits``.

    Returns:
      Per-example hits (0.0 or 1.0), shape of ``labels``, in float32 (float64 for float64 logits).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.metrics import topk_accuracy
      >>> logits = jnp.array([[0.1, 2.0, 0.5], [3.0, 1.0, 2.0]])
      >>> print(topk_accuracy(logits, jnp.array([2, 1]), k=2))
      [1. 0.]
    """
    prepared = _validation.prepare(logits, labels, axis=axis)
    k = _validation.check_integer("k", k, lower=1, upper=prepared.num_classes)
    return _topk_hits(prepared.logits, prepared.labels, k)


# The cores are jitted so that eager calls compile once rather than dispatching op by op.
@functools.partial(jax.jit, static_argnames="k")
def _topk_hits(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    valid = (labels >= 0) & (labels < scores.shape[-1])
    label_score = WHOLE.label_value(scores, jnp.where(valid, labels, 0))
    # Counting the strictly greater scores is O(C) and needs no sort, unlike lax.top_k.
    num_greater = jnp.sum(scores > label_score[..., None], axis=-1)
    hit = valid & (num_greater < k) & ~jnp.isnan(label_score)
    return hit.astype(scores.dtype)


@functools.partial(jax.jit, static_argnames="num_classes")
def _per_class_mean(
    values: jax.Array, labels: jax.Array, num_classes: int, where: jax.Array | None
) -> jax.Array:
    """Mean of ``values`` over the examples of each class; NaN for classes with no example."""
    keep = (labels >= 0) & (labels < num_classes)
    if where is not None:
        keep &= where
    # Dropped examples go to an extra segment, which segment_sum ignores.
    segments = jnp.where(keep, labels, num_classes).ravel()
    counts = jax.ops.segment_sum(keep.ravel().astype(jnp.int32), segments, num_classes)
    totals = jax.ops.segment_sum(jnp.where(keep, values, 0).ravel(), segments, num_classes)
    present = counts > 0
    return jnp.where(present, totals / jnp.where(present, counts, 1), jnp.nan)


def per_class_recall(
    predictions: Any, labels: Any, *, num_classes: int, where: Any = None
) -> jax.Array:
    r"""Recall of every class: the fraction of its examples predicted as that class.

    .. math::
      r_c = \frac{|\{i : y_i = c,\ \hat y_i = c\}|}{|\{i : y_i = c\}|}

    Args:
      predictions: integer predicted classes, any shape.
      labels: integer true classes, the shape of ``predictions``. Labels outside
        ``[0, num_classes)`` are ignored.
      num_classes: the number of classes ``C``.
      where: optional boolean mask broadcastable to the labels' shape; False drops an example (for
        padded evaluation batches).

    Returns:
      Recalls, shape ``(num_classes,)``, float32 (float64 under x64); NaN for classes with no
      (unmasked) example in ``labels``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.metrics import per_class_recall
      >>> predictions, labels = jnp.array([0, 1, 1, 2]), jnp.array([0, 0, 1, 1])
      >>> print(per_class_recall(predictions, labels, num_classes=3))
      [0.5 0.5 nan]
    """
    predictions, labels = _validation.check_predictions(predictions, labels)
    num_classes = _validation.check_integer("num_classes", num_classes, lower=1)
    where = _validation.check_example_mask(where, labels.shape)
    hits = (predictions == labels).astype(jnp.result_type(float))
    return _per_class_mean(hits, labels, num_classes, where)


def balanced_accuracy(
    predictions: Any, labels: Any, *, num_classes: int, where: Any = None
) -> jax.Array:
    r"""Balanced accuracy: the mean recall over the classes present in ``labels``.

    .. math::
      \mathrm{BA} = \frac{1}{|P|} \sum_{c \in P} r_c, \qquad P = \{c : \exists i,\ y_i = c\}

    This is ``sklearn.metrics.balanced_accuracy_score`` (with ``adjusted=False``): classes that
    occur only in ``predictions`` take no part. It equals plain accuracy when every class has the
    same number of examples.

    Args:
      predictions: integer predicted classes, any shape.
      labels: integer true classes, the shape of ``predictions``.
      num_classes: the number of classes ``C``.
      where: optional boolean per-example mask broadcastable to the labels' shape.

    Returns:
      A scalar in [0, 1]; NaN when no (unmasked) example is given.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.metrics import balanced_accuracy
      >>> predictions, labels = jnp.array([0, 0, 0, 1]), jnp.array([0, 0, 0, 0])
      >>> print(round(float(balanced_accuracy(predictions, labels, num_classes=2)), 4))
      0.75
    """
    recall = per_class_recall(predictions, labels, num_classes=num_classes, where=where)
    return _nanmean(recall)


def macro_topk_accuracy(
    logits: Any,
    labels: Any,
    *,
    k: int,
    num_classes: int,
    where: Any = None,
    axis: int = -1,
) -> jax.Array:
    r"""Macro-average top-k accuracy: the mean over present classes of per-class top-k recall.

    .. math::
      \frac{1}{|P|} \sum_{c \in P} \frac{\sum_{i : y_i = c} \mathrm{hit}_i}{|\{i : y_i = c\}|}

    with :math:`\mathrm{hit}_i` of :func:`topk_accuracy` (ties in the label's favour). This is the
    headline metric of Pl\@ntNet-300K; with ``k=1`` it is the balanced accuracy of the argmax (up
    to ties).

    Args:
      logits: float scores, shape ``(..., num_classes)`` with the classes along ``axis``.
      labels: integer labels, the logits' shape without ``axis``.
      k: the top-k cut-off, in ``[1, num_classes]``.
      num_classes: the number of classes; must equal the size of the logits' class axis.
      where: optional boolean per-example mask broadcastable to the labels' shape.
      axis: the class axis of ``logits``.

    Returns:
      A scalar in [0, 1]; NaN when no (unmasked) example is given.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.metrics import macro_topk_accuracy
      >>> logits = jnp.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
      >>> labels = jnp.array([1, 2, 2])
      >>> print(round(float(macro_topk_accuracy(logits, labels, k=2, num_classes=3)), 4))
      0.75
    """
    hits = topk_accuracy(logits, labels, k=k, axis=axis)
    num_classes = _validation.check_integer("num_classes", num_classes, lower=1)
    class_axis_size = np.shape(logits)[axis]
    if num_classes != class_axis_size:
        raise ValueError(
            f"num_classes={num_classes} does not match the {class_axis_size} classes along axis "
            f"{axis} of the logits (shape {np.shape(logits)})."
        )
    labels = jnp.asarray(labels)
    where = _validation.check_example_mask(where, labels.shape)
    return _nanmean(_per_class_mean(hits, labels, num_classes, where))


@jax.jit
def _nanmean(values: jax.Array) -> jax.Array:
    """Mean over the non-NaN entries; NaN (without a warning) when there is none."""
    present = ~jnp.isnan(values)
    count = jnp.sum(present)
    total = jnp.sum(jnp.where(present, values, 0))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
