"""Run-time checks that trace-time validation cannot make: label range and NaN inputs."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp
from jax.experimental import checkify

from jaxloss import _validation

__all__ = ["checked"]


def checked(fn: Callable) -> Callable:
    """Wraps a loss so that bad values raise instead of silently giving garbage.

    Shapes, dtypes and hyperparameters are checked at trace time by every loss. Label values are not:
    inside ``jit`` an out-of-range label is clamped or filled by JAX's gather semantics and the loss
    returns a meaningless (but finite or NaN) number. ``checked(fn)`` runs ``fn`` under
    :mod:`jax.experimental.checkify` and raises ``checkify.JaxRuntimeError`` when a label lies outside
    ``[0, num_classes)``, when the logits hold NaN or Inf, or when the loss itself produces NaN.

    It is meant for debugging and data pipelines' sanity checks; the checks cost a reduction over the
    inputs. To use it inside your own ``jit``, use ``checkify`` directly on your train step.

    Args:
      fn: a loss ``fn(logits, labels, *args, axis=-1, **kwargs)``.

    Returns:
      A function with the same signature that raises on bad values.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> safe = jaxloss.checked(jaxloss.balanced_softmax_loss)
      >>> safe(jnp.zeros((1, 3)), jnp.array([3]), class_counts=jnp.ones(3))
      Traceback (most recent call last):
      ...
      jax...JaxRuntimeError: labels must be in [0, 3); got a label of 3 ...
    """

    @functools.wraps(fn)
    def wrapper(logits, labels, *args, **kwargs):
        axis = kwargs.get("axis", -1)
        num_classes = _validation.prepare(logits, labels, axis=axis).num_classes

        def body(logits, labels):
            checkify.check(
                jnp.all(jnp.isfinite(logits)),
                "logits contain NaN or Inf values",
            )
            bad = (labels < 0) | (labels >= num_classes)
            checkify.check(
                ~jnp.any(bad),
                f"labels must be in [0, {num_classes}); got a label of {{label}} "
                "(the first one out of range)",
                label=labels.ravel()[jnp.argmax(bad.ravel())],
            )
            return fn(logits, labels, *args, **kwargs)

        errors = checkify.user_checks | checkify.nan_checks
        error, out = checkify.checkify(body, errors=errors)(
            jnp.asarray(logits), jnp.asarray(labels)
        )
        error.throw()
        return out

    return wrapper
