"""Losses robust to noisy labels: the generalized cross-entropy (Zhang & Sabuncu, 2018)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss import _validation
from jaxloss.losses import _docstrings, _softmax
from jaxloss.losses._spec import LossSpec, Range

__all__ = ["generalized_cross_entropy_loss"]


@_docstrings.shared_args
def generalized_cross_entropy_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    q: float = 0.7,
    axis: int | tuple[int, ...] = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Generalized cross-entropy :math:`\mathcal{L}_q`, between cross-entropy and absolute error.

    .. math::
      \ell(z, y) = \frac{1 - p_y^q}{q}, \qquad p = \mathrm{softmax}(z), \quad 0 < q \le 1.

    As :math:`q \to 0` it tends to the cross-entropy :math:`-\log p_y`; ``q=1`` gives
    :math:`1 - p_y`, the mean absolute error up to a factor 2, which is robust to label noise but
    slow to train. In between, its gradient is the cross-entropy's weighted by :math:`p_y^q`, so
    examples the model finds implausible (often the mislabelled ones) weigh less. The loss is
    bounded: :math:`0 \le \ell < 1/q`, and its sum over every label lies in
    :math:`[(C - C^{1-q})/q,\ (C - 1)/q]` (the paper's Lemma 1). :math:`p_y^q` is
    :math:`\exp(q \log p_y)` from max-shifted logits and the difference an ``expm1``, so the loss
    keeps full relative precision when :math:`p_y` rounds to 1.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      q: the exponent, in ``(0, 1]`` (the paper trains with 0.7); may be a traced array.
      axis: (shared)
      where: (shared: softmax)
      class_axis_name: (shared)

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
      >>> loss = jaxloss.generalized_cross_entropy_loss(logits, jnp.array([0, 1]), q=0.7)
      >>> print(loss.round(4).tolist())  # (1 - 0.7870^0.7) / 0.7 and (1 - 3^-0.7) / 0.7
      [0.2205, 0.7665]

    References:
      Zhang & Sabuncu, `Generalized Cross Entropy Loss for Training Deep Neural Networks with
      Noisy Labels <https://arxiv.org/abs/1805.07836>`_, NeurIPS 2018.
    """
    _validation.check_in_range("q", q, lower=0.0, upper=1.0, lower_open=True)
    inputs = _validation.prepare(
        logits, labels, axis=axis, where=where, class_axis_name=class_axis_name
    )
    parts = _softmax.softmax_parts(
        inputs.logits, inputs.labels, inputs.where, classes=inputs.classes
    )
    # log p_y as log1p(-(1 - p_y)) while 1 - p_y (the others' share, a sum) is small: exact when
    # p_y rounds to 1, where label - log(total) would be 0. The double where keeps the branch not
    # taken finite (log1p(-1) = -inf at a masked label, whose 1 - p_y is 1).
    rest = parts.rest / parts.total
    near_one = rest < 0.5
    log_p_y = jnp.where(
        near_one,
        jnp.log1p(-jnp.where(near_one, rest, 0.0)),
        parts.label - jnp.log(parts.total),
    )
    return inputs.finish(-jnp.expm1(q * log_p_y) / q)


SPECS = (
    LossSpec(
        "generalized_cross_entropy",
        generalized_cross_entropy_loss,
        ranges={"q": Range(0.1, 1.0, log=False)},
        tuned=("q",),
        page="calibration",
    ),
)
