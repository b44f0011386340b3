"""Every loss by name, behind one calling convention, for training loops and comparisons.

``get_loss(name, **hyperparameters)`` returns ``fn(logits, labels, *, key) -> per-example loss``.
Deterministic losses ignore ``key``; stochastic ones (EXACT, the noised top-k losses) draw their noise
from it. Hyperparameters are checked against the loss's own keyword arguments when the callable is
made, so a typo fails before any compilation.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from jaxloss import _validation

__all__ = ["available_losses", "get_loss"]

LossFn = Callable[..., jax.Array]

# Keyword arguments of the library's losses that are plumbing, not hyperparameters.
_PLUMBING = frozenset({"key", "axis", "axis_name", "where", "noise", "uniforms"})


def _cross_entropy(logits, labels):
    inputs = _validation.prepare(logits, labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(inputs.logits, inputs.labels)
    return ce.astype(inputs.out_dtype)


def _label_smoothing(logits, labels, *, alpha=0.1):
    """Cross-entropy against ``(1 - alpha) * one_hot + alpha / C`` (Szegedy et al., 2016)."""
    _validation.check_in_range("alpha", alpha, lower=0.0, upper=1.0)
    inputs = _validation.prepare(logits, labels)
    one_hot = jax.nn.one_hot(inputs.labels, inputs.num_classes, dtype=inputs.logits.dtype)
    ce = optax.softmax_cross_entropy(inputs.logits, optax.smooth_labels(one_hot, alpha))
    return ce.astype(inputs.out_dtype)


def _logit_adjusted(logits, labels, *, class_counts, tau=1.0):
    """Logit adjustment with the priors of the training class counts."""
    from jaxloss import losses

    # Checked here so that errors name the argument the caller passed; the loss itself is
    # invariant to rescaling, so counts serve as priors unnormalized.
    counts = _validation.check_class_vector("class_counts", class_counts, np.shape(logits)[-1])
    return losses.logit_adjusted_loss(logits, labels, class_priors=counts, tau=tau)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """How to reach one loss: a function of ``jaxloss.losses`` by name, or a local adapter."""

    target: str | Callable[..., jax.Array]
    stochastic: bool = False

    def function(self) -> Callable[..., jax.Array]:
        if callable(self.target):
            return self.target
        # Looked up at call time: the loss modules import nothing from here.
        from jaxloss import losses

        return getattr(losses, self.target)


_REGISTRY: dict[str, _Entry] = {
    "cross_entropy": _Entry(_cross_entropy),
    "label_smoothing": _Entry(_label_smoothing),
    "exact": _Entry("exact_loss", stochastic=True),
    "smooth_topk_svm": _Entry("smooth_topk_svm_loss"),
    "topk_svm": _Entry("topk_svm_loss"),
    "balanced_noised_topk": _Entry("balanced_noised_topk_loss", stochastic=True),
    "imbalanced_noised_topk": _Entry("imbalanced_noised_topk_loss", stochastic=True),
    "ldam": _Entry("ldam_loss"),
    "label_relaxation": _Entry("label_relaxation_loss"),
    "confidence_penalty": _Entry("confidence_penalty_loss"),
    "focal": _Entry("softmax_focal_loss"),
    "balanced_softmax": _Entry("balanced_softmax_loss"),
    "logit_adjusted": _Entry(_logit_adjusted),
}


def available_losses() -> tuple[str, ...]:
    """Names accepted by :func:`get_loss`, in a stable order.

    Example:
      >>> "cross_entropy" in available_losses()
      True
    """
    return tuple(_REGISTRY)


def _hyperparameters(fn: Callable) -> tuple[dict[str, Any], set[str]]:
    """The keyword hyperparameters of ``fn``: ``({name: default}, required names)``."""
    accepted, required = {}, set()
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or parameter.name in _PLUMBING:
            continue
        accepted[parameter.name] = parameter.default
        if parameter.default is inspect.Parameter.empty:
            required.add(parameter.name)
    return accepted, required


def get_loss(name: str, *, class_counts: Any = None, **hyperparameters: Any) -> LossFn:
    """A loss by name as ``fn(logits, labels, *, key) -> per-example loss``.

    Args:
      name: one of :func:`available_losses`.
      class_counts: number of training examples per class, shape ``(num_classes,)``. A statistic
        of the data rather than a hyperparameter: passed to the losses that use it (Balanced
        Softmax, logit adjustment, LDAM, the imbalanced noised top-k loss) and ignored by the rest,
        so a training loop can always supply it.
      **hyperparameters: the loss's keyword arguments (for example ``k=5, tau=1.0`` for
        ``smooth_topk_svm``); the loss's own defaults apply to those not given.

    Returns:
      A function of ``(logits, labels, *, key)``. ``key`` is a ``jax.random`` key, used by the
      stochastic losses (``exact``, ``balanced_noised_topk``, ``imbalanced_noised_topk``) and
      ignored by the others; fold a step counter into it so every step draws fresh noise.

    Raises:
      ValueError: an unknown name, an unknown hyperparameter or a missing required one; the
        message lists the valid choices.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> loss = get_loss("label_smoothing", alpha=0.1)
      >>> loss(jnp.zeros((2, 3)), jnp.array([0, 2]), key=jax.random.key(0)).shape
      (2,)
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown loss {name!r}. Available losses: {', '.join(available_losses())}."
        )
    entry = _REGISTRY[name]
    fn = entry.function()
    accepted, required = _hyperparameters(fn)
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ValueError(
            f"Loss {name!r} got unknown hyperparameter(s) {', '.join(unknown)}. "
            f"Valid hyperparameters: {_describe(accepted)}."
        )
    kwargs = dict(hyperparameters)
    if "class_counts" in accepted:
        if class_counts is None:
            raise ValueError(
                f"Loss {name!r} needs class_counts, the number of training examples per class."
            )
        kwargs["class_counts"] = np.asarray(class_counts)
    missing = sorted(required - set(kwargs))
    if missing:
        raise ValueError(
            f"Loss {name!r} is missing required hyperparameter(s) {', '.join(missing)}. "
            f"Valid hyperparameters: {_describe(accepted)}."
        )

    def loss(logits: jax.Array, labels: jax.Array, *, key: jax.Array) -> jax.Array:
        if entry.stochastic:
            return fn(logits, labels, key=key, **kwargs)
        return fn(logits, labels, **kwargs)

    loss.__name__ = name
    loss.__doc__ = f"{name} loss with {kwargs or 'default hyperparameters'}."
    return loss


def _describe(accepted: dict[str, Any]) -> str:
    if not accepted:
        return "none"
    return ", ".join(
        f"{key} (required)" if default is inspect.Parameter.empty else f"{key}={default!r}"
        for key, default in accepted.items()
    )
