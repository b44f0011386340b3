"""Log-probability pieces shared by the softmax-based losses (class axis last)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def log_softmax(logits: jax.Array, where: jax.Array | None) -> jax.Array:
    """log p over the classes, -inf for classes masked out by ``where``."""
    if where is not None:
        logits = jnp.where(where, logits, -jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def label_value(values: jax.Array, labels: jax.Array) -> jax.Array:
    """values[..., labels]: the entry of the labelled class."""
    return jnp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]


def log_one_minus_label_prob(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
    """log(1 - p_y) as a log-sum-exp over the other classes.

    ``log1p(-p_y)`` loses everything when p_y rounds to 1 (logit gaps beyond ~17 in float32); the
    sum over the other classes keeps full relative precision, e.g. log(1 - p_y) = -1e4 exactly.
    """
    others = jnp.arange(log_probs.shape[-1]) != labels[..., None]
    return jax.nn.logsumexp(jnp.where(others, log_probs, -jnp.inf), axis=-1)
