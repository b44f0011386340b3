"""Softmax pieces shared by the losses, the registry and the metrics (class axis last).

The functions here take *prepared* arrays: the classes along the last axis, in the compute dtype
(what :func:`jaxloss._validation.prepare` returns), and an optional boolean class mask of the
logits' shape.

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


class SoftmaxParts(NamedTuple):
    """z - max(z) over the kept classes, its exponential and sum, and the label's shifted logit.

    log p_y = label - log(total). A row with no class left (all masked, or all ``-inf``) has
    total 1 and label 0, the parts of a prediction certain of its label: every loss that is 0 there
    (cross-entropy, label relaxation, focal, confidence penalty) then gives 0 with gradient 0,
    without a NaN from log(0) or -inf - (-inf).
    """

    shifted: jax.Array  # (..., C), <= 0, -inf at masked classes
    exp: jax.Array  # (..., C), in [0, 1], 0 at masked classes
    total: jax.Array  # (...,), >= 1
    label: jax.Array  # (...,), z_y - max(z), taken as it is when the label's class is masked


def _mask(logits: jax.Array, where: jax.Array | None) -> jax.Array:
    return logits if where is None else jnp.where(where, logits, -jnp.inf)


def _shift(masked: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The row maximum as a shift (kept dims, no gradient) and whether the row keeps a class.

    A row with no class left has maximum -inf: it is shifted by 0, so that it stays -inf instead of
    turning NaN. A NaN compares unequal to -inf, so a NaN logit keeps its row (and makes it NaN).
    """
    top = jnp.max(masked, axis=-1, keepdims=True)
    kept = top != -jnp.inf
    return jax.lax.stop_gradient(jnp.where(kept, top, 0.0)), kept[..., 0]


def row_max(logits: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """max(z) over the kept classes of the last axis, as a shift: kept dims, no gradient.

    0 on a row with no class left.
    """
    return _shift(_mask(logits, where))[0]


def softmax_parts(
    logits: jax.Array, labels: jax.Array, where: jax.Array | None = None
) -> SoftmaxParts:
    """The parts of softmax(logits) over the last axis; classes excluded by ``where`` get p = 0.

    Args:
      logits: shape ``(..., C)``, in the compute dtype.
      labels: integer labels, shape ``(...)``.
      where: optional boolean class mask of the logits' shape.
    """
    masked = _mask(logits, where)
    top, kept = _shift(masked)
    shifted = masked - top
    exp = jnp.exp(shifted)
    total = jnp.where(kept, jnp.sum(exp, axis=-1), 1.0)
    label = jnp.where(kept, label_value(logits, labels) - top[..., 0], 0.0)
    return SoftmaxParts(shifted, exp, total, label)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, where: jax.Array | None = None
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

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.losses._softmax import cross_entropy
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> print(cross_entropy(logits, jnp.array([0, 1])).round(4).tolist())
      [0.2761, 2.9518]
    """
    parts = softmax_parts(logits, labels, where)
    return jnp.log(parts.total) - parts.label


def label_value(values: jax.Array, labels: jax.Array) -> jax.Array:
    """values[..., labels]: the entry of the labelled class.

    Args:
      values: shape ``(..., C)``.
      labels: integer labels in ``[0, C)``, shape ``(...)``.

    Returns:
      Shape ``(...)``.
    """
    return jnp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]


def sum_of_others(values: jax.Array, labels: jax.Array) -> jax.Array:
    """Σ_{k≠y} values_k, a masked sum rather than a difference.

    Applied to the exponentials it gives (1 - p_y)·total with full relative precision, where
    total - exp_y would cancel to 0 as soon as p_y rounds to 1.
    """
    others = jnp.arange(values.shape[-1]) != labels[..., None]
    return jnp.sum(jnp.where(others, values, 0.0), axis=-1)
