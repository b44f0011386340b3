"""Run-time checks that trace-time validation cannot make: label range, NaN inputs and outputs."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import checkify

from jaxloss import _validation

__all__ = ["checked"]


def _frozen(value):
    """``value`` cut from any differentiation around it (the checks need no gradient)."""
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.inexact):
        return lax.stop_gradient(value)
    return value


def checked(fn: Callable) -> Callable:
    """Wraps a loss so that bad values raise instead of silently giving garbage.

    Shapes, dtypes and concrete hyperparameters are checked at trace time by every loss. Values
    are not: inside ``jit`` an out-of-range label only makes its loss NaN, and a hyperparameter
    passed as a traced array (a ``jit`` argument, a ``vmap``-ed population) has no value to check.
    ``checked(fn)`` runs ``fn`` under :mod:`jax.experimental.checkify` and raises
    ``checkify.JaxRuntimeError`` when a label lies outside ``[0, num_classes)`` (the classes of
    whole rows: with ``class_axis_name``, those of every shard), when the logits hold NaN or
    ``+inf`` (``-inf`` is a legal masked class), when a traced hyperparameter is out of its range
    (NaN, or infinite where the loss needs it finite), or when the loss returns NaN.

    The checks are explicit reductions over the inputs and the output, so a checked call costs
    about one more evaluation of the loss (and compiles about as fast). The checked evaluation is
    not differentiated: under ``jax.grad`` (or another transformation) the wrapper checks a
    gradient-free copy of the call and returns the plain loss, so ``jax.grad(checked(loss))``
    works for every loss, custom VJPs included.

    ``checked`` raises eagerly, so it cannot raise from inside a compiled function by itself. To
    check a jitted train step, functionalize the step and throw outside it; the checks of
    ``checked`` inside the step become part of the returned error::

      step = jax.jit(checkify.checkify(train_step, errors=checkify.user_checks))
      error, outputs = step(state, batch)
      error.throw()

    The same holds inside ``shard_map``: functionalize the ``shard_map``-ed function (or the step
    around it), not the loss inside it.

    Args:
      fn: a loss ``fn(logits, labels, *args, axis=-1, **kwargs)``.

    Returns:
      A function with the same signature that raises on bad values.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jax.experimental import checkify
      >>> import jaxloss
      >>> safe = jaxloss.checked(jaxloss.balanced_softmax_loss)
      >>> safe(jnp.zeros((1, 3)), jnp.array([3]), class_counts=jnp.ones(3))
      Traceback (most recent call last):
      ...
      jax...JaxRuntimeError: labels must be in [0, 3); got a label of 3 ...
      >>> relaxation = jax.jit(
      ...     checkify.checkify(jaxloss.checked(jaxloss.label_relaxation_loss)),
      ... )
      >>> error, _ = relaxation(jnp.zeros((1, 3)), jnp.array([0]), alpha=jnp.float32(2.0))
      >>> print(error.get())
      alpha must be in [0.0, 1.0), got 2.0 ...
    """

    @functools.wraps(fn)
    def wrapper(logits, labels, *args, **kwargs):
        # Labels are global class indices: under class_axis_name, the classes of every shard.
        num_classes = _validation.prepare(
            logits,
            labels,
            axis=kwargs.get("axis", -1),
            class_axis_name=kwargs.get("class_axis_name"),
        ).num_classes
        logits, labels = jnp.asarray(logits), jnp.asarray(labels)
        call = (logits, labels, args, kwargs)

        def body():
            # checkify cannot differentiate through a custom VJP, hence the frozen copy.
            logits, labels, args, kwargs = jax.tree.map(_frozen, call)
            checkify.check(
                ~jnp.any(jnp.isnan(logits) | (logits == jnp.inf)),
                "logits contain NaN or +inf values (-inf is a masked class, the others must be "
                "finite)",
            )
            if labels.size:  # an empty batch has no label to check (nor a first bad one)
                bad = (labels < 0) | (labels >= num_classes)
                checkify.check(
                    ~jnp.any(bad),
                    f"labels must be in [0, {num_classes}); got a label of {{label}} "
                    "(the first one out of range)",
                    label=labels.ravel()[jnp.argmax(bad.ravel())],
                )
            out = fn(logits, labels, *args, **kwargs)
            checkify.check(~jnp.any(jnp.isnan(out)), "the loss is NaN for valid inputs")
            return out

        error, out = checkify.checkify(body, errors=checkify.user_checks)()
        error.throw()
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(call)):
            return fn(logits, labels, *args, **kwargs)
        return out

    return wrapper
