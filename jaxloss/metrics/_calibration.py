"""Expected calibration error, in one call or as mergeable per-bin sums."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _validation

__all__ = [
    "CalibrationBins",
    "calibration_bins",
    "ece_from_bins",
    "expected_calibration_error",
]


class CalibrationBins(NamedTuple):
    """Per-bin sums of a calibration measurement; a pytree that merges by addition.

    Every field has shape ``(n_bins,)`` (plus any leading axes added by ``vmap``). Because the
    fields are plain sums, the bins of two batches (or of several devices, via ``jax.lax.psum``)
    merge into the bins of their union. ``count`` and ``correct_sum`` are int32 and merge exactly;
    ``confidence_sum`` is a float sum, so its last bits depend on the order of the additions.

    Attributes:
      count: number of examples whose confidence falls in each bin.
      confidence_sum: sum of their top-label confidences.
      correct_sum: number of them whose argmax equals the label.
    """

    count: jax.Array
    confidence_sum: jax.Array
    correct_sum: jax.Array

    def merge(self, other: CalibrationBins) -> CalibrationBins:
        """The bins of the union of the two sets of examples."""
        return jax.tree.map(jnp.add, self, other)


def _bin_edges(n_bins: int, dtype: Any) -> np.ndarray:
    """Inner edges 1/n, ..., (n-1)/n, each rounded to ``dtype`` (the dtype of the confidences)."""
    # Python's b / n is correctly rounded to float64, and rounding that to a narrower dtype gives
    # the correctly rounded b / n there too, so an edge is exactly what jnp.asarray(b / n, dtype)
    # stores: a confidence written as b / n in that dtype lands in bin b.
    return np.asarray([b / n_bins for b in range(1, n_bins)], dtype=np.float64).astype(dtype)


def calibration_bins(
    probs: Any, labels: Any, *, n_bins: int = 15, where: Any = None, axis: int = -1
) -> CalibrationBins:
    r"""Sorts examples into equal-width confidence bins and sums what ECE needs per bin.

    The confidence of an example is its top-label probability :math:`\max_c p_{ic}`, and it is
    correct when :math:`\arg\max_c p_{ic} = y_i` (ties go to the first index, as in NumPy). Bin
    :math:`b` holds the confidences in :math:`[b/n, (b+1)/n)`; 1.0 goes to the last bin. The edges
    :math:`b/n` are rounded to the dtype of ``probs`` and compared exactly, so the rule is the same
    in float32 and float64: a confidence equal to ``b / n`` in its dtype goes to bin ``b`` (the
    upper one), and the next float below it to bin ``b - 1``. (``floor(conf * n)`` misplaces some
    values within an ulp or two of an edge: in float32 the product can round up to ``b``, and in
    float64 a float32 edge lies just below ``b/n``.) Confidences below 0 go to the first bin and
    above 1 to the last.

    This differs from the label-relaxation seed's ``conf // (1 / n)``, which puts some confidences
    that lie exactly on an edge (e.g. 0.6 with 15 bins) one bin lower; results differ only for such
    confidences.

    Args:
      probs: probabilities, shape ``(..., num_classes)`` with the classes along ``axis``. They are
        used as given (not normalized).
      labels: integer labels, the probs' shape without ``axis``.
      n_bins: the number of equal-width bins, at least 1.
      where: optional boolean per-example mask broadcastable to the labels' shape; False drops an
        example.
      axis: the class axis of ``probs``.

    Returns:
      A :class:`CalibrationBins` with fields of shape ``(n_bins,)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.metrics import calibration_bins
      >>> probs = jnp.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
      >>> bins = calibration_bins(probs, jnp.array([0, 0, 1]), n_bins=4)
      >>> print(bins.count, bins.correct_sum)
      [0 0 1 2] [0 0 0 1]
    """
    prepared = _validation.prepare(probs, labels, axis=axis)
    n_bins = _validation.check_integer("n_bins", n_bins, lower=1)
    where = _validation.check_example_mask(where, prepared.labels.shape)
    edges = _bin_edges(n_bins, prepared.out_dtype)
    return _bin_sums(prepared.logits, prepared.labels, where, edges)


# Jitted so that eager calls compile once rather than dispatching op by op.
@jax.jit
def _bin_sums(
    probs: jax.Array, labels: jax.Array, where: jax.Array | None, edges: np.ndarray
) -> CalibrationBins:
    n_bins = edges.shape[0] + 1
    confidence = jnp.max(probs, axis=-1)
    correct = jnp.argmax(probs, axis=-1) == labels
    # The number of inner edges at or below a confidence is its bin: edges go to the upper bin.
    edges = edges.astype(probs.dtype)
    bin_index = jnp.searchsorted(edges, confidence, side="right", method="compare_all")
    keep = jnp.ones(confidence.shape, bool) if where is None else where
    # Masked examples go to an extra segment n_bins, which segment_sum drops.
    segments = jnp.where(keep, bin_index, n_bins).ravel()

    def per_bin(values):
        return jax.ops.segment_sum(jnp.where(keep, values, 0).ravel(), segments, n_bins)

    return CalibrationBins(
        count=per_bin(jnp.ones(confidence.shape, jnp.int32)),
        confidence_sum=per_bin(confidence),
        correct_sum=per_bin(correct.astype(jnp.int32)),
    )


def ece_from_bins(bins: CalibrationBins) -> jax.Array:
    r"""The expected calibration error of accumulated :class:`CalibrationBins`.

    .. math::
      \mathrm{ECE} = \sum_b \frac{n_b}{N} \left| \mathrm{acc}_b - \mathrm{conf}_b \right|
                   = \frac{1}{N} \sum_b \left| \textstyle\sum_{i \in b} \mathrm{correct}_i
                     - \sum_{i \in b} \mathrm{conf}_i \right|

    Empty bins contribute 0.

    Args:
      bins: per-bin sums, fields of shape ``(..., n_bins)``.

    Returns:
      The ECE as a fraction in [0, 1] (not a percentage), shape ``(...)``; NaN when the bins hold
      no example.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.metrics import calibration_bins, ece_from_bins
      >>> first = calibration_bins(jnp.array([[0.9, 0.1], [0.3, 0.7]]), jnp.array([0, 1]))
      >>> second = calibration_bins(jnp.array([[0.6, 0.4], [0.2, 0.8]]), jnp.array([1, 1]))
      >>> print(round(float(ece_from_bins(first.merge(second))), 4))
      0.3
    """
    return _ece(bins)


@jax.jit
def _ece(bins: CalibrationBins) -> jax.Array:
    dtype = bins.confidence_sum.dtype
    total = jnp.sum(bins.count, axis=-1)
    gap = jnp.abs(bins.correct_sum.astype(dtype) - bins.confidence_sum)
    return jnp.where(total > 0, jnp.sum(gap, axis=-1) / jnp.maximum(total, 1), jnp.nan)


def expected_calibration_error(
    probs: Any, labels: Any, *, n_bins: int = 15, where: Any = None, axis: int = -1
) -> jax.Array:
    r"""Expected calibration error of top-label confidences with equal-width bins.

    .. math::
      \mathrm{ECE} = \sum_{b=0}^{n-1} \frac{n_b}{N}
        \left| \mathrm{acc}_b - \mathrm{conf}_b \right|

    where :math:`n_b` examples have their top-label confidence in :math:`[b/n, (b+1)/n)` (1.0 in
    the last bin), :math:`\mathrm{acc}_b` is the fraction of them whose argmax is the label and
    :math:`\mathrm{conf}_b` their mean confidence. The binning rule, exact at the edges in float32
    and float64, is that of :func:`calibration_bins`; this is ``ece_from_bins(calibration_bins(...))``.

    Args:
      probs: probabilities, shape ``(..., num_classes)`` with the classes along ``axis``.
      labels: integer labels, the probs' shape without ``axis``.
      n_bins: the number of bins (15 in the label-relaxation experiments).
      where: optional boolean per-example mask broadcastable to the labels' shape.
      axis: the class axis of ``probs``.

    Returns:
      A scalar fraction in [0, 1] (not a percentage); NaN when no (unmasked) example is given.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.metrics import expected_calibration_error
      >>> probs = jnp.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
      >>> labels = jnp.array([0, 1, 0, 1])
      >>> print(round(float(expected_calibration_error(probs, labels, n_bins=15)), 4))
      0.25
    """
    return _ece(calibration_bins(probs, labels, n_bins=n_bins, where=where, axis=axis))
