"""Reliability diagram: per-bin accuracy against confidence."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxloss.metrics._calibration import CalibrationBins, calibration_bins, ece_from_bins

__all__ = ["reliability_diagram"]


def reliability_diagram(
    bins_or_probs: CalibrationBins | Any,
    labels: Any = None,
    *,
    n_bins: int = 15,
    ax: Any = None,
    title: str | None = None,
    ece: float | None = None,
    ece_label: str | None = None,
):
    """Draws a reliability diagram: the accuracy of each confidence bin against the diagonal.

    One bar per bin (height: the fraction of correct examples in it, 0 for an empty bin), the
    diagonal of perfect calibration, the gap between each non-empty bin's accuracy and its mean
    confidence shaded, each non-empty bin's number of examples written above it (a bin of few
    examples says little), and the ECE (a fraction) in the legend, which sits below the axes so
    that it covers no bar. Needs matplotlib, which is imported only when this function is
    called.

    Args:
      bins_or_probs: either accumulated :class:`CalibrationBins` (e.g. merged over an evaluation
        set), or probabilities of shape ``(..., num_classes)``.
      labels: integer labels when ``bins_or_probs`` are probabilities; must be None for bins.
      n_bins: the number of bins when binning probabilities (bins carry their own).
      ax: a matplotlib Axes to draw on; a new figure is made when None.
      title: the axes' title.
      ece: the ECE to print in the legend; default the ECE of these bins. A report that pools
        several models' bins passes the number its table shows (e.g. the mean over seeds).
      ece_label: what that number is (e.g. ``"mean over 3 seeds"``), shown next to it.

    Returns:
      The matplotlib Figure that holds the plot.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.metrics import reliability_diagram
      >>> probs = jnp.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
      >>> figure = reliability_diagram(probs, jnp.array([0, 1, 1, 1]), n_bins=10)
      >>> print(len(figure.axes[0].containers[0]))
      10
    """
    # Imported here so that `import jaxloss` does not pull in matplotlib.
    import matplotlib.figure

    if isinstance(bins_or_probs, CalibrationBins):
        if labels is not None:
            raise ValueError("labels must be None when reliability_diagram is given bins.")
        bins = bins_or_probs
    else:
        if labels is None:
            raise ValueError("labels are required when reliability_diagram is given probs.")
        bins = calibration_bins(bins_or_probs, labels, n_bins=n_bins)
    count = np.asarray(bins.count, np.float64)
    if count.ndim != 1:
        raise ValueError(
            f"bins must hold one set of bins (fields of shape (n,)), got {count.shape}."
        )
    num = count.shape[0]
    nonempty = count > 0
    denominator = np.maximum(count, 1)
    accuracy = np.asarray(bins.correct_sum, np.float64) / denominator
    confidence = np.asarray(bins.confidence_sum, np.float64) / denominator
    if ece is None:
        ece = float(ece_from_bins(bins))
    described = f"ECE = {ece:.4f}" + (f", {ece_label}" if ece_label else "")

    if ax is None:
        figure = matplotlib.figure.Figure(figsize=(4.5, 5.4), layout="constrained")
        ax = figure.add_subplot()
    width = 1.0 / num
    left = np.arange(num) * width
    ax.bar(left, accuracy, width=width, align="edge", edgecolor="black", label="accuracy")
    ax.bar(
        left[nonempty],
        (confidence - accuracy)[nonempty],
        bottom=accuracy[nonempty],
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        hatch="//",
        label=f"gap ({described})",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    for x, n, top in zip(left[nonempty], count[nonempty], accuracy[nonempty], strict=True):
        ax.text(
            x + width / 2,
            min(top, 0.97) + 0.01,
            f"{n:.0f}",
            ha="center",
            va="bottom",
            rotation=90,
            fontsize=6,
        )
    ax.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="confidence", ylabel="accuracy")
    if title is not None:
        ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    return ax.figure
