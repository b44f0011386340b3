"""PolyLoss (Leng et al., 2022): cross-entropy plus a weighted first polynomial term."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss import _validation
from jaxloss.losses import _docstrings, _softmax
from jaxloss.losses._spec import LossSpec, Range

__all__ = ["poly1_loss"]


@_docstrings.shared_args
def poly1_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    epsilon: float = 1.0,
    axis: int | tuple[int, ...] = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Poly-1 loss: cross-entropy plus :math:`\epsilon` times the first term of its Taylor series.

    .. math::
      \ell(z, y) = -\log p_y + \epsilon\,(1 - p_y), \qquad p = \mathrm{softmax}(z).

    Cross-entropy is :math:`\sum_{j \ge 1} (1 - p_y)^j / j`; Poly-1 reweights the leading term, which
    dominates the gradient of well-classified examples: :math:`\epsilon > 0` keeps pushing them,
    :math:`\epsilon < 0` lets them go. :math:`1 - p_y` is the sum of the other classes'
    probabilities (not a difference that cancels), so the extra term keeps full precision when
    :math:`p_y` rounds to 1. ``epsilon=0`` is the cross-entropy; the loss stays a decreasing
    function of :math:`p_y` for :math:`\epsilon \ge -1`. One of EXACT's baselines (Tables 1-2).

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``; a tuple of
        axes flattens them, as in optax).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      epsilon: weight of the polynomial term, ``>= -1``.
      axis: (shared)
      where: (shared)
      class_axis_name: (shared)

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[2.0, 0.0, 0.0]])
      >>> print(jaxloss.poly1_loss(logits, jnp.array([0]), epsilon=1.0).round(4).tolist())
      [0.4526]

    References:
      Leng et al., `PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions
      <https://arxiv.org/abs/2204.12511>`_, ICLR 2022.
    """
    _validation.check_in_range("epsilon", epsilon, lower=-1.0, finite=True)
    inputs = _validation.prepare(
        logits, labels, axis=axis, where=where, class_axis_name=class_axis_name
    )
    parts = _softmax.softmax_parts(
        inputs.logits, inputs.labels, inputs.where, classes=inputs.classes
    )
    ce = jnp.log(parts.total) - parts.label
    rest = parts.rest / parts.total
    return inputs.finish(ce + epsilon * rest)


SPECS = (
    LossSpec(
        "poly1",
        poly1_loss,
        ranges={"epsilon": Range(-1.0, 4.0, log=False)},
        tuned=("epsilon",),
        page="calibration",
    ),
)
