"""Label relaxation (Lienen & Hüllermeier, 2021): a credal-set target instead of a one-hot one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from jaxloss import _validation
from jaxloss.losses import _docstrings, _softmax
from jaxloss.losses._spec import LossSpec, Range


@_docstrings.shared_args
def label_relaxation_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 0.1,
    axis: int | tuple[int, ...] = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Label relaxation loss: KL divergence from the closest distribution of a credal set.

    The target is the set of distributions that give the true class at least :math:`1 - \alpha`,
    :math:`Q = \{q : q_y \geq 1 - \alpha\}`. The loss is the KL divergence from the prediction
    :math:`p = \mathrm{softmax}(z)` to that set, which has the closed form

    .. math::
      \ell(z, y) = \begin{cases}
        0 & p_y \geq 1 - \alpha, \\
        (1 - \alpha) \log \frac{1 - \alpha}{p_y} + \alpha \log \frac{\alpha}{1 - p_y}
          & \text{otherwise.}
      \end{cases}

    :math:`\log p_y` comes from max-shifted logits and :math:`1 - p_y` is the sum of the other
    classes' probabilities (not a difference), so there is no probability clipping: values and
    gradients are exact and finite for logits up to :math:`\pm 10^4` in float32, where the reference code clips
    probabilities at 1e-7 and differs from the exact loss. The gradient outside the set is
    :math:`p - p^r`, with :math:`p^r_y = 1 - \alpha` and :math:`p^r_k = \alpha p_k / (1 - p_y)`.
    With ``alpha=0`` the loss is the cross-entropy.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      alpha: imprecision of the target, in ``[0, 1)``.
      axis: (shared)
      where: (shared: softmax)
      class_axis_name: (shared)

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
      >>> print(jaxloss.label_relaxation_loss(logits, jnp.array([0, 0]), alpha=0.1).tolist())
      [0.0, 1.095]

    References:
      Lienen & Hüllermeier, `From Label Smoothing to Label Relaxation
      <https://ojs.aaai.org/index.php/AAAI/article/view/17041>`_, AAAI 2021.
    """
    _validation.check_in_range("alpha", alpha, lower=0.0, upper=1.0, upper_open=True)
    inputs = _validation.prepare(
        logits, labels, axis=axis, where=where, min_classes=2, class_axis_name=class_axis_name
    )
    parts = _softmax.softmax_parts(
        inputs.logits, inputs.labels, inputs.where, classes=inputs.classes
    )
    log_total = jnp.log(parts.total)
    log_p_y = parts.label - log_total
    alpha = jnp.asarray(alpha, log_total.dtype)
    # 1 - p_y is the mass of the other kept classes: all of it when the label's class is masked,
    # which keeps that row outside the set and its value the cross-entropy's for alpha = 0.
    rest = parts.rest
    inside = rest <= alpha * parts.total
    # Inside the set the sum of the other classes may underflow to 0: log(1) keeps the branch that
    # is not taken finite.
    log_rest = jnp.log(jnp.where(inside, parts.total, rest)) - log_total
    # xlogy keeps alpha = 0 at exactly 0 instead of 0 * log(0) = NaN.
    outside = (
        xlogy(1.0 - alpha, 1.0 - alpha)
        - (1.0 - alpha) * log_p_y
        + xlogy(alpha, alpha)
        - alpha * log_rest
    )
    return inputs.finish(jnp.where(inside, 0.0, outside))


SPECS = (
    LossSpec(
        "label_relaxation",
        label_relaxation_loss,
        ranges={"alpha": Range(0.01, 0.5)},
        tuned=("alpha",),
        page="calibration",
    ),
)
