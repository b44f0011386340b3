"""``lax.top_k`` in a form XLA:CPU keeps fast."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _columns(array: jax.Array) -> jax.Array:
    """``array`` rebuilt column by column from masked sums (exact: the other terms are zeros)."""
    positions = jnp.arange(array.shape[-1])
    zeros = jnp.zeros_like(array)
    return jnp.stack(
        [jnp.sum(jnp.where(positions == j, array, zeros), axis=-1) for j in range(array.shape[-1])],
        axis=-1,
    )


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k largest entries of the last axis, descending, and their indices, safe to slice.

    XLA:CPU rewrites a TopK whose outputs are sliced into a full sort: 534 ms instead of 10 ms for
    k = 6 on a 2560x1000 array (jax 0.10), and the losses need single columns such as the k-th
    largest. Reading the outputs through masked sums keeps the TopK; an optimization barrier would
    too, but crashes XLA's compiler under ``jax.pmap``. k is small here, so the k extra reductions
    over (..., k) arrays cost nothing measurable.
    """
    values, indices = lax.top_k(x, k)
    return _columns(values), _columns(indices)
