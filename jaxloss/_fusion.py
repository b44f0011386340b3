"""Keeping a computation apart from XLA:CPU's fusion of what produces and consumes it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import lax


def apart(fn: Callable[..., Any], *operands: Any) -> Any:
    """``fn(*operands)``, with its operands and results each written out once.

    ``fn`` runs in a branch of a conditional (always taken; both branches are ``fn``), which
    XLA:CPU fuses nothing across: an operand is not recomputed in the branch's loops, nor is a
    result in its readers'. An optimization barrier does not do this: XLA:CPU drops the barriers
    before it fuses. The predicate is a constant behind a barrier, which XLA cannot fold (a
    conditional on a constant is inlined) and ``jax.vmap`` leaves unbatched (a batched predicate
    turns the conditional into a select of both branches, inlined: twice the work, fused).
    """
    either = lax.optimization_barrier(jnp.zeros((), bool))
    return lax.cond(either, fn, fn, *operands)
