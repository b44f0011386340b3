"""One error for forward-mode differentiation of the losses built on custom VJPs."""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["reverse_mode_only"]

# What JAX says when jvp meets a jax.custom_vjp function.
_JAX_MESSAGE = "can't apply forward-mode autodiff (jvp) to a custom_vjp function"
_OWN_MESSAGE = "supports reverse-mode differentiation only"


def reverse_mode_only(fn: Callable) -> Callable:
    """Marks ``fn`` as differentiable in reverse mode only, and names it in JAX's jvp error.

    Losses whose gradient is a ``jax.custom_vjp`` (an estimator's own gradient, or a stable backward
    pass) have no forward-mode rule: ``jax.jvp``, ``jax.jacfwd`` and ``jax.hessian`` fail deep
    inside the op. This re-raises that error naming the public function and the way out.
    """

    namespace = "jaxloss.ops" if fn.__module__.startswith("jaxloss.ops") else "jaxloss"
    public_name = f"{namespace}.{fn.__name__}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TypeError as error:
            # An inner reverse-mode-only function may have named itself already: the user called
            # this one, so name this one.
            if _JAX_MESSAGE not in str(error) and _OWN_MESSAGE not in str(error):
                raise
            raise TypeError(
                f"{public_name} {_OWN_MESSAGE} (jax.grad, "
                "jax.vjp, jax.jacrev): its gradient is a custom VJP. Forward mode (jax.jvp, "
                "jax.jacfwd, jax.hessian) is not available; use jax.grad or jax.jacrev instead."
            ) from error

    wrapper.reverse_mode_only = True
    return wrapper
