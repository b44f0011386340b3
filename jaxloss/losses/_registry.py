"""Every loss by name: one :class:`LossSpec` each, and one calling convention for training loops.

``get_loss(name, **hyperparameters)`` returns ``fn(logits, labels, *, key) -> per-example loss``.
Deterministic losses ignore ``key``; stochastic ones (EXACT, the noised top-k losses) draw their noise
from it. Hyperparameters are checked against the loss's own keyword arguments when the callable is
made, so a typo fails before any compilation.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import optim
from jaxloss.losses import _baselines
from jaxloss.losses._confidence import confidence_penalty_loss, softmax_focal_loss
from jaxloss.losses._exact import exact_loss
from jaxloss.losses._label_relaxation import label_relaxation_loss
from jaxloss.losses._logit_adjustment import balanced_softmax_loss, logit_adjusted_loss
from jaxloss.losses._noised_topk import (
    balanced_noised_topk_loss,
    imbalanced_noised_topk_loss,
    ldam_loss,
)
from jaxloss.losses._poly import poly1_loss
from jaxloss.losses._spec import LossSpec, Range
from jaxloss.losses._topk_svm import smooth_topk_svm_loss, topk_svm_loss

__all__ = ["available_losses", "get_loss", "loss_spec"]


def _exact_temperature(*, num_epochs, steps_per_epoch, initial_variance, min_variance):
    """EXACT's vision recipe: the noise variance decays geometrically per epoch; T = sqrt(v)."""
    variance = optim.variance_schedule(
        num_epochs, steps_per_epoch, min_variance=min_variance, init_variance=initial_variance
    )
    return lambda step: {"temperature": jnp.sqrt(variance(step))}


def _injected_noise(shape, rng, hyperparameters):
    """The noised top-k losses' standard-normal draws, one set per example: they shard with it."""
    draws = rng.standard_normal(tuple(shape) + (hyperparameters["sample_size"],))
    return {"noise": jnp.asarray(draws, jnp.float32), "key": None}


def _quadrature(shape, rng, hyperparameters):
    del shape, rng, hyperparameters
    return {"method": "quadrature"}


_SPECS = (
    LossSpec("cross_entropy", _baselines.cross_entropy_loss),
    LossSpec(
        "label_smoothing",
        _baselines.label_smoothing_loss,
        ranges={"alpha": Range(0.01, 0.3)},
        tuned=("alpha",),
    ),
    LossSpec(
        "exact",
        exact_loss,
        ranges={"temperature": Range(0.1, 10.0), "margin": Range(0.1, 10.0)},
        tuned=("margin",),
        schedule=_exact_temperature,
        schedule_defaults={"initial_variance": 100.0, "min_variance": 1.0},
        optimizer={"gradient_normalizer": True},
        reproducible=_quadrature,
    ),
    LossSpec(
        "smooth_topk_svm",
        smooth_topk_svm_loss,
        defaults={"k": 5},
        ranges={
            "tau": Range(0.05, 5.0),
            "alpha": Range(0.1, 2.0),
            "hard_threshold": Range(10.0, 1e4),
        },
        tuned=("tau",),
    ),
    LossSpec(
        "topk_svm",
        topk_svm_loss,
        defaults={"k": 5},
        ranges={"alpha": Range(0.1, 2.0)},
        tuned=("alpha",),
    ),
    LossSpec(
        "balanced_noised_topk",
        balanced_noised_topk_loss,
        defaults={"k": 5, "epsilon": 1.0},
        ranges={"epsilon": Range(0.05, 5.0)},
        tuned=("epsilon",),
        reproducible=_injected_noise,
    ),
    LossSpec(
        "imbalanced_noised_topk",
        imbalanced_noised_topk_loss,
        defaults={"k": 5, "epsilon": 0.01, "max_m": 0.2},
        ranges={
            "epsilon": Range(1e-3, 0.1),
            "max_m": Range(0.05, 0.5),
            "scale": Range(10.0, 100.0),
        },
        tuned=("max_m",),
        logit_scale="scale",
        reproducible=_injected_noise,
    ),
    LossSpec(
        "ldam",
        ldam_loss,
        ranges={"max_m": Range(0.05, 1.0), "scale": Range(10.0, 100.0)},
        tuned=("max_m",),
        logit_scale="scale",
    ),
    LossSpec(
        "label_relaxation",
        label_relaxation_loss,
        ranges={"alpha": Range(0.01, 0.5)},
        tuned=("alpha",),
    ),
    LossSpec(
        "confidence_penalty",
        confidence_penalty_loss,
        defaults={"beta": 0.3},
        ranges={"beta": Range(0.01, 1.0)},
        tuned=("beta",),
    ),
    LossSpec(
        "focal",
        softmax_focal_loss,
        ranges={"gamma": Range(0.0, 5.0, log=False)},
        tuned=("gamma",),
    ),
    LossSpec(
        "poly1",
        poly1_loss,
        ranges={"epsilon": Range(-1.0, 4.0, log=False)},
        tuned=("epsilon",),
    ),
    LossSpec("balanced_softmax", balanced_softmax_loss),
    LossSpec(
        "logit_adjusted",
        logit_adjusted_loss,
        ranges={"tau": Range(0.25, 2.0, log=False)},
        tuned=("tau",),
    ),
)
_REGISTRY: dict[str, LossSpec] = {spec.name: spec for spec in _SPECS}


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
