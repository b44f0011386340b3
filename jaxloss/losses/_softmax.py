"""Softmax pieces shared by the loss modules (class axis last).

The functions here take *prepared* arrays: the classes along the last axis, in the compute dtype
(what :func:`jaxloss._validation.prepare` returns), an optional boolean class mask of the logits'
shape, and the :class:`~jaxloss._classes.ClassAxis` that reduces over the classes (``classes``:
whole rows by default, or rows split over a ``shard_map`` mesh axis).

Every loss built on them is shift invariant, so it works on z - max(z) and exponentiates once: one
exp pass over a (batch, classes) array, which is what these losses cost, and exact differences such
as z_y - log Σ exp(z) even for logits far from 0 (at |z| = 1e4 a float32 ulp is 1e-3).

Masking follows optax's ``softmax_cross_entropy_with_integer_labels``: a class excluded by
``where`` drops out of every normalizer, the label's logit enters as it is even when its class is
excluded, and a row with no class left has loss 0 and gradient 0. A ``-inf`` logit is an excluded
class.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxloss._classes import WHOLE, ClassAxis


class SoftmaxParts(NamedTuple):
    """Σ e^z over the kept classes other than the label's, over all of them, and z_y, after a shift.

    log p_y = label - log(total) and 1 - p_y = rest / total. A row with no class left (all masked,
    or all ``-inf``) has total 1, rest 0 and label 0, the parts of a prediction certain of its
    label: every loss that is 0 there (cross-entropy, label relaxation, focal, poly-1) then gives 0
    with gradient 0, without a NaN from log(0) or -inf - (-inf).
    """

    rest: jax.Array  # (...,), Σ_{k≠y} e^{z_k}: (1 - p_y) total
    total: jax.Array  # (...,), rest + p_y total: >= 1, or > e^-MAX_BIAS_SPREAD with a bias
    label: jax.Array  # (...,), z_y shifted, taken as it is when the label's class is masked


# Shifting by max(z) + max(b) keeps every exponent <= 0 and that of max(z)'s class above
# -MAX_BIAS_SPREAD: the total stays above e^-16, so nothing overflows and a class that underflows
# (float32: below e^-87) is below e^-71 of the total.
MAX_BIAS_SPREAD = 16.0


def mask(logits: jax.Array, where: jax.Array | None) -> jax.Array:
    """The logits with the classes ``where`` excludes at -inf."""
    return logits if where is None else jnp.where(where, logits, -jnp.inf)


def _shift(masked: jax.Array, classes: ClassAxis) -> tuple[jax.Array, jax.Array]:
    """The row maximum as a shift (kept dims, no gradient) and whether the row keeps a class.

    A row with no class left has maximum -inf: it is shifted by 0, so that it stays -inf instead of
    turning NaN. A NaN compares unequal to -inf, so a NaN logit keeps its row (and makes it NaN).
    """
    top = classes.max(masked)[..., None]
    kept = top != -jnp.inf
    return jnp.where(kept, top, 0.0), kept[..., 0]


def row_max(
    logits: jax.Array, where: jax.Array | None = None, *, classes: ClassAxis = WHOLE
) -> jax.Array:
    """max(z) over the kept classes of the last axis, as a shift: kept dims, no gradient.

    0 on a row with no class left.
    """
    return _shift(mask(logits, where), classes)[0]


def shifted_logits(
    logits: jax.Array,
    labels: jax.Array,
    where: jax.Array | None = None,
    *,
    bias: jax.Array | None = None,
    bias_spread: float | None = None,
    classes: ClassAxis = WHOLE,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """logits + bias shifted by their max over the kept classes of the last axis.

    Args:
      logits: shape ``(..., C)``, in the compute dtype.
      labels: integer labels, shape ``(...)``.
      where: optional boolean class mask of the logits' shape.
      bias: optional finite per-class term, shape ``(C,)``, added after the max shift: z + b at
        |z| = 1e4 would round b to an ulp (1e-3 in float32), (z - max(z + b)) + b keeps it.
      bias_spread: max(bias) - min(bias) when it is known (concrete). Below
        :data:`MAX_BIAS_SPREAD`, max(z) + max(b) is the shift: the max pass then reads the logits
        alone, instead of z + b (whose broadcast XLA writes out as one more (..., C) array).
      classes: the class axis, whole or split.

    Returns:
      ``(shifted, label, kept)``: the shifted values, shape ``(..., C)``, -inf at masked classes;
      the label's shifted value, taken as it is when its class is masked, 0 on a row with no class
      left; and whether the row keeps a class, shape ``(...)``.
    """
    masked = mask(logits, where)
    if bias is None:
        top, kept = _shift(masked, classes)
        shifted = masked - top
        label = classes.label_value(logits, labels) - top[..., 0]
    else:
        if bias_spread is not None and bias_spread < MAX_BIAS_SPREAD:
            top, kept = _shift(masked, classes)
            top = top + classes.max(bias)
        else:
            top, kept = _shift(masked + bias, classes)
        shifted = (masked - top) + bias
        label = (classes.label_value(logits, labels) - top[..., 0]) + classes.take(bias, labels)
    return shifted, jnp.where(kept, label, 0.0), kept


def softmax_parts(
    logits: jax.Array,
    labels: jax.Array,
    where: jax.Array | None = None,
    *,
    bias: jax.Array | None = None,
    bias_spread: float | None = None,
    classes: ClassAxis = WHOLE,
) -> SoftmaxParts:
    """The parts of softmax(logits + bias) over the last axis; classes excluded by ``where`` get
    p = 0.

    Args:
      logits: shape ``(..., C)``, in the compute dtype.
      labels: integer labels, shape ``(...)``.
      where: optional boolean class mask of the logits' shape.
      bias: optional finite per-class term, shape ``(C,)``, as in :func:`shifted_logits`.
      bias_spread: max(bias) - min(bias) when known, as in :func:`shifted_logits`.
      classes: the class axis, whole or split.
    """
    shifted, label, kept = shifted_logits(
        logits, labels, where, bias=bias, bias_spread=bias_spread, classes=classes
    )
    # One (..., C) array and one reduction, of the other classes (masked before the exponential, so
    # that the gradient reads the same array): the total adds the label's term to their sum, so that
    # 1 - p_y = rest / total keeps full relative precision when p_y rounds to 1 (total - exp_y
    # would cancel to 0), without a second pass over the classes.
    others = jnp.exp(jnp.where(classes.is_label(labels, logits.shape[-1]), -jnp.inf, shifted))
    rest = jnp.where(kept, classes.sum(others), 0.0)
    label_exp = jnp.exp(label)
    if where is not None:
        # An excluded label class leaves the total; its logit still enters the loss as it is.
        label_exp = jnp.where(classes.label_value(where, labels), label_exp, 0.0)
    total = jnp.where(kept, rest + label_exp, 1.0)
    return SoftmaxParts(rest, total, label)


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    bias: jax.Array | None = None,
    bias_spread: float | None = None,
    classes: ClassAxis = WHOLE,
) -> jax.Array:
    r"""Softmax cross-entropy with integer labels, optax's semantics on prepared arrays.

    .. math::
      \ell(z, y) = \log \sum_{k \in W} e^{z_k} - z_y,

    over the kept classes :math:`W`. As :func:`optax.softmax_cross_entropy_with_integer_labels`:
    the label's logit enters as it is even when its class is masked (a finite value), and a row
    with no class kept gives 0, here also with gradient 0. A row whose logits are all ``-inf``
    counts as having no class kept (optax gives NaN there).

    Args:
      logits: shape ``(..., C)``, in the compute dtype.
      labels: integer labels in ``[0, C)``, shape ``(...)``.
      where: optional boolean class mask of the logits' shape; False excludes a class.
      bias: optional per-class term added to the logits, as in :func:`softmax_parts`.
      bias_spread: max(bias) - min(bias) when known, as in :func:`softmax_parts`.
      classes: the class axis, whole or split.

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.losses._softmax import cross_entropy
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> print(cross_entropy(logits, jnp.array([0, 1])).round(4).tolist())
      [0.2761, 2.9518]
    """
    parts = softmax_parts(
        logits, labels, where, bias=bias, bias_spread=bias_spread, classes=classes
    )
    return jnp.log(parts.total) - parts.label
