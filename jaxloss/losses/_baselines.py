"""The baselines every comparison needs: softmax cross-entropy and label smoothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss import _validation
from jaxloss.losses import _docstrings, _softmax
from jaxloss.losses._spec import LossSpec, Range

__all__ = ["cross_entropy_loss", "label_smoothing_loss"]


@_docstrings.shared_args
def cross_entropy_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    axis: int | tuple[int, ...] = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Softmax cross-entropy with integer labels: optax's semantics, with jaxloss's checks.

    .. math::
      \ell(z, y) = \log \sum_k e^{z_k} - z_y.

    The values of :func:`optax.softmax_cross_entropy_with_integer_labels` (a tuple ``axis``
    flattened in the order given, ``where``), with the inputs checked at trace time like every
    loss; the baseline every comparison runs. A row with no class kept gives 0 with gradient 0.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      axis: (shared)
      where: (shared)
      class_axis_name: (shared)

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[2.0, 0.0, 0.0]])
      >>> print(jaxloss.cross_entropy_loss(logits, jnp.array([0])).round(4).tolist())
      [0.2395]
    """
    inputs = _validation.prepare(
        logits, labels, axis=axis, where=where, class_axis_name=class_axis_name
    )
    ce = _softmax.cross_entropy(
        inputs.logits, inputs.labels, where=inputs.where, classes=inputs.classes
    )
    return inputs.finish(ce)


@_docstrings.shared_args
def label_smoothing_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 0.1,
    axis: int | tuple[int, ...] = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Cross-entropy against ``(1 - alpha) * one_hot + alpha / C`` (Szegedy et al., 2016).

    .. math::
      \ell(z, y) = (1 - \alpha)\,(-\log p_y) + \frac{\alpha}{C} \sum_k (-\log p_k),

    with :math:`C` the number of classes that take part (not excluded by ``where``, not ``-inf``).

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      alpha: the mass spread uniformly over the classes, in ``[0, 1]``; 0 is the cross-entropy.
      axis: (shared)
      where: (shared)
      class_axis_name: (shared)

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[2.0, 0.0, 0.0]])
      >>> print(jaxloss.label_smoothing_loss(logits, jnp.array([0]), alpha=0.1).round(4).tolist())
      [0.3729]

    References:
      Szegedy et al., `Rethinking the Inception Architecture for Computer Vision
      <https://arxiv.org/abs/1512.00567>`_, CVPR 2016.
    """
    _validation.check_in_range("alpha", alpha, lower=0.0, upper=1.0)
    inputs = _validation.prepare(
        logits, labels, axis=axis, where=where, class_axis_name=class_axis_name
    )
    classes = inputs.classes
    z = inputs.logits
    present = z != -jnp.inf  # NaN stays in, so that it propagates
    if inputs.where is not None:
        present &= inputs.where
    ce = _softmax.cross_entropy(z, inputs.labels, where=present, classes=classes)
    count = classes.sum(present.astype(jnp.int32))
    # -mean_k log p_k = logsumexp(z) - mean_k z_k, with logsumexp(z) = ce + z_y.
    mean_logit = classes.sum(jnp.where(present, z, 0.0)) / jnp.maximum(count, 1)
    uniform = ce + classes.label_value(z, inputs.labels) - mean_logit
    smoothed = (1.0 - alpha) * ce + alpha * uniform
    return inputs.finish(jnp.where(count > 0, smoothed, 0.0))


SPECS = (
    LossSpec("cross_entropy", cross_entropy_loss, page="calibration"),
    LossSpec(
        "label_smoothing",
        label_smoothing_loss,
        ranges={"alpha": Range(0.01, 0.3)},
        tuned=("alpha",),
        page="calibration",
    ),
)
