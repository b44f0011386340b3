"""Softmax pieces shared by the closed-form losses (class axis last).

Every loss here is shift invariant, so it works on z - max(z) and exponentiates once: one exp pass
over a (batch, classes) array, which is what these losses cost, and exact differences such as
z_y - log Σ exp(z) even for logits far from 0 (at |z| = 1e4 a float32 ulp is 1e-3).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class SoftmaxParts(NamedTuple):
    """z - max(z), its exponential and their sum; log p = shifted - log(total)."""

    shifted: jax.Array  # (..., C), <= 0, -inf at masked classes
    exp: jax.Array  # (..., C), in [0, 1], 0 at masked classes
    total: jax.Array  # (...,), >= 1


def shifted_logits(logits: jax.Array, where: jax.Array | None) -> jax.Array:
    """z - max(z) over the last axis, -inf at the classes excluded by ``where``."""
    if where is not None:
        logits = jnp.where(where, logits, -jnp.inf)
    return logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))


def softmax_parts(logits: jax.Array, where: jax.Array | None) -> SoftmaxParts:
    """The parts of softmax(logits) over the last axis; classes excluded by ``where`` get p = 0."""
    shifted = shifted_logits(logits, where)
    exp = jnp.exp(shifted)
    return SoftmaxParts(shifted, exp, jnp.sum(exp, axis=-1))


def label_value(values: jax.Array, labels: jax.Array) -> jax.Array:
    """values[..., labels]: the entry of the labelled class."""
    return jnp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]


def sum_of_others(values: jax.Array, labels: jax.Array) -> jax.Array:
    """Σ_{k≠y} values_k, a masked sum rather than a difference.

    Applied to the exponentials it gives (1 - p_y)·total with full relative precision, where
    total - exp_y would cancel to 0 as soon as p_y rounds to 1.
    """
    others = jnp.arange(values.shape[-1]) != labels[..., None]
    return jnp.sum(jnp.where(others, values, 0.0), axis=-1)
