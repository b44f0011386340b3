"""Softmax pieces shared by the closed-form losses (class axis last).

They work on the logits directly (log-sum-exps and one gather) instead of materializing the
log-softmax: fewer passes over a (batch, classes) array, which is what these losses cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def shifted_logits(logits: jax.Array, where: jax.Array | None) -> jax.Array:
    """Logits minus their row maximum, with classes excluded by ``where`` at -inf.

    Every loss here is shift invariant. Shifting first keeps differences like z_y - logsumexp(z)
    exact for logits far from 0 (at 1e4 a float32 ulp is 1e-3, more than many loss values).
    """
    if where is not None:
        logits = jnp.where(where, logits, -jnp.inf)
    return logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))


def label_value(values: jax.Array, labels: jax.Array) -> jax.Array:
    """values[..., labels]: the entry of the labelled class."""
    return jnp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]


def logsumexp_others(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """log Σ_{k≠y} exp(z_k): with the full log-sum-exp it gives log(1 - p_y) to full precision.

    ``log1p(-p_y)`` loses everything when p_y rounds to 1 (logit gaps beyond ~17 in float32); the
    sum over the other classes keeps it exact, e.g. log(1 - p_y) = -1e4 for a gap of 1e4.
    """
    others = jnp.arange(logits.shape[-1]) != labels[..., None]
    return jax.nn.logsumexp(jnp.where(others, logits, -jnp.inf), axis=-1)
