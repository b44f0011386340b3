"""The baselines every comparison needs: softmax cross-entropy and label smoothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss import _validation
from jaxloss.losses import _softmax

__all__ = ["cross_entropy_loss", "label_smoothing_loss"]


def cross_entropy_loss(
    logits: jax.Array, labels: jax.Array, *, axis: int = -1, where: jax.Array | None = None
) -> jax.Array:
    """Softmax cross-entropy with integer labels, with optax's semantics and jaxloss's checks."""
    inputs = _validation.prepare(logits, labels, axis=axis, where=where)
    ce = _softmax.cross_entropy(inputs.logits, inputs.labels, where=inputs.where)
    return ce.astype(inputs.out_dtype)


def label_smoothing_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 0.1,
    axis: int = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    r"""Cross-entropy against ``(1 - alpha) * one_hot + alpha / C`` (Szegedy et al., 2016).

    .. math::
      \ell(z, y) = (1 - \alpha)\,(-\log p_y) + \frac{\alpha}{C} \sum_k (-\log p_k),

    with :math:`C` the number of classes that take part (not excluded by ``where``, not ``-inf``).
    """
    _validation.check_in_range("alpha", alpha, lower=0.0, upper=1.0)
    inputs = _validation.prepare(logits, labels, axis=axis, where=where)
    z = inputs.logits
    present = z != -jnp.inf  # NaN stays in, so that it propagates
    if inputs.where is not None:
        present &= inputs.where
    ce = _softmax.cross_entropy(z, inputs.labels, where=present)
    count = jnp.sum(present, axis=-1)
    # -mean_k log p_k = logsumexp(z) - mean_k z_k, with logsumexp(z) = ce + z_y.
    mean_logit = jnp.sum(jnp.where(present, z, 0.0), axis=-1) / jnp.maximum(count, 1)
    uniform = ce + _softmax.label_value(z, inputs.labels) - mean_logit
    smoothed = (1.0 - alpha) * ce + alpha * uniform
    return jnp.where(count > 0, smoothed, 0.0).astype(inputs.out_dtype)
