"""Every loss by name: one :class:`LossSpec` each, and one calling convention for training loops.

Each loss module declares the specs of its losses beside their functions, in a module-level
``SPECS`` tuple; the registry collects them from every module of :mod:`jaxloss.losses`, so adding a
loss is its module (and its test): nothing here, in ``__init__`` or in the registry-driven tests
changes.

``get_loss(name, **hyperparameters)`` returns ``fn(logits, labels, *, key) -> per-example loss``.
Deterministic losses ignore ``key``; stochastic ones (EXACT, the noised top-k losses) draw their noise
from it. Hyperparameters are checked against the loss's own keyword arguments when the callable is
made, so a typo fails before any compilation.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss.losses._spec import LossSpec

__all__ = ["available_losses", "get_loss", "loss_spec"]

# The order of available_losses(): the seeds' families first, as they have always been listed; a
# module not named here is collected after them, in name order. (Only the order: membership is
# whatever the modules declare.)
_FAMILIES = (
    "_baselines",
    "_exact",
    "_topk_svm",
    "_noised_topk",
    "_label_relaxation",
    "_confidence",
    "_poly",
    "_logit_adjustment",
)


def _collect() -> dict[str, LossSpec]:
    """The ``SPECS`` of every module of this package, by name; a name declared twice is an error."""
    found = {info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])}
    registry: dict[str, LossSpec] = {}
    for module in (*_FAMILIES, *sorted(found - set(_FAMILIES))):
        for spec in getattr(importlib.import_module(f"{__package__}.{module}"), "SPECS", ()):
            if spec.name in registry:
                raise ValueError(f"Loss {spec.name!r} is registered twice (in {module}).")
            registry[spec.name] = spec
    return registry


_REGISTRY: dict[str, LossSpec] = _collect()


def available_losses() -> tuple[str, ...]:
    """Names accepted by :func:`get_loss`, in a stable order.

    Example:
      >>> "cross_entropy" in available_losses()
      True
    """
    return tuple(_REGISTRY)


def loss_spec(name: str) -> LossSpec:
    """The :class:`LossSpec` of a registered loss: its function, defaults, ranges and needs.

    Example:
      >>> spec = loss_spec("smooth_topk_svm")
      >>> spec.hyperparameters()["k"], spec.stochastic, spec.head
      (5, False, 'linear')
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown loss {name!r}. Available losses: {', '.join(available_losses())}."
        )
    return _REGISTRY[name]


def get_loss(name: str, *, class_counts: Any = None, **hyperparameters: Any):
    """A loss by name as ``fn(logits, labels, *, key, class_axis_name=None) -> per-example loss``.

    Args:
      name: one of :func:`available_losses`.
      class_counts: number of training examples per class, shape ``(num_classes,)``. A statistic
        of the data rather than a hyperparameter: passed to the losses that use it (Balanced
        Softmax, logit adjustment, LDAM, the imbalanced noised top-k loss) and ignored by the rest,
        so a training loop can always supply it.
      **hyperparameters: the loss's keyword arguments (for example ``k=5, tau=1.0`` for
        ``smooth_topk_svm``); the loss's own defaults apply to those not given. Continuous ones
        may be traced arrays (one value per member of a vmapped population).

    Returns:
      A function of ``(logits, labels, *, key, class_axis_name=None)``. ``key`` is a
      ``jax.random`` key, used by the stochastic losses (``exact``, ``balanced_noised_topk``,
      ``imbalanced_noised_topk``) and ignored by the others; fold a step counter into it so every
      step draws fresh noise. ``class_axis_name`` goes to the loss: inside ``shard_map``, the
      mesh axis that the classes are split over (the losses that take ``class_counts`` then need
      each device's block of it: call them directly, with the counts mapped like the logits). For the
      losses made for cosine scores (``spec.logit_scale``), ``logits`` are what their head emits,
      ``scale * cosine``; the function divides by ``scale`` before the loss applies its own.

    Raises:
      ValueError: an unknown name, an unknown hyperparameter or a missing required one; the
        message lists the valid choices.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> loss = get_loss("label_smoothing", alpha=0.1)
      >>> loss(jnp.zeros((2, 3)), jnp.array([0, 2]), key=jax.random.key(0)).shape
      (2,)
    """
    spec = loss_spec(name)
    accepted = spec.signature_defaults()
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ValueError(
            f"Loss {name!r} got unknown hyperparameter(s) {', '.join(unknown)}. "
            f"Valid hyperparameters: {_describe(accepted)}."
        )
    kwargs = dict(hyperparameters)
    if spec.needs_class_counts:
        if class_counts is None:
            raise ValueError(
                f"Loss {name!r} needs class_counts, the number of training examples per class."
            )
        kwargs["class_counts"] = (
            class_counts if isinstance(class_counts, jax.Array) else np.asarray(class_counts)
        )
    required = {k for k, v in accepted.items() if v is inspect.Parameter.empty}
    missing = sorted(required - set(kwargs))
    if missing:
        raise ValueError(
            f"Loss {name!r} is missing required hyperparameter(s) {', '.join(missing)}. "
            f"Valid hyperparameters: {_describe(accepted)}."
        )
    fn = spec.fn
    scale = None if spec.logit_scale is None else spec.scale(kwargs)

    def loss(
        logits: jax.Array,
        labels: jax.Array,
        *,
        key: jax.Array,
        class_axis_name: str | None = None,
    ) -> jax.Array:
        dtype = jnp.result_type(logits)
        if scale is not None:
            # In float32 at least: the loss multiplies by the scale again.
            logits = logits / jnp.asarray(scale, jnp.promote_types(dtype, jnp.float32))
        noise = {"key": key} if spec.stochastic else {}
        return fn(logits, labels, **noise, **kwargs, class_axis_name=class_axis_name).astype(dtype)

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
