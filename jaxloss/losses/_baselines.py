"""The baselines every comparison needs: softmax cross-entropy and label smoothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss import _validation
from jaxloss.losses import _softmax
from jaxloss.losses._spec import LossSpec, Range

__all__ = ["cross_entropy_loss", "label_smoothing_loss"]


def cross_entropy_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    axis: int = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """Softmax cross-entropy with integer labels, with optax's semantics and jaxloss's checks.

    ``class_axis_name``: inside ``shard_map``, the mesh axis the classes are split over.
    """
    inputs = _validation.prepare(
        logits, labels, axis=axis, where=where, class_axis_name=class_axis_name
    )
    ce = _softmax.cross_entropy(
        inputs.logits, inputs.labels, where=inputs.where, classes=inputs.classes
    )
    return inputs.finish(ce)


def label_smoothing_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 0.1,
    axis: int = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Cross-entropy against ``(1 - alpha) * one_hot + alpha / C`` (Szegedy et al., 2016).

    .. math::
      \ell(z, y) = (1 - \alpha)\,(-\log p_y) + \frac{\alpha}{C} \sum_k (-\log p_k),

    with :math:`C` the number of classes that take part (not excluded by ``where``, not ``-inf``).
    ``class_axis_name``: inside ``shard_map``, the mesh axis the classes are split over.
    """
    _validation.check_in_range("alpha", alpha, lower=0.0, upper=1.0)
    inputs = _validation.prepare(
        logits, labels, axis=axis, where=where, class_axis_name=class_axis_name
    )
    classes = inputs.classes
    z = inputs.logits
    present = z != -jnp.inf  # NaN stays in, so that it propagates
    if inputs.where is not None:
        present &= inputs.where
    ce = _softmax.cross_entropy(z, inputs.labels, where=present, classes=classes)
    count = classes.sum(present.astype(jnp.int32))
    # -mean_k log p_k = logsumexp(z) - mean_k z_k, with logsumexp(z) = ce + z_y.
    mean_logit = classes.sum(jnp.where(present, z, 0.0)) / jnp.maximum(count, 1)
    uniform = ce + classes.label_value(z, inputs.labels) - mean_logit
    smoothed = (1.0 - alpha) * ce + alpha * uniform
    return inputs.finish(jnp.where(count > 0, smoothed, 0.0))


SPECS = (
    LossSpec("cross_entropy", cross_entropy_loss),
    LossSpec(
        "label_smoothing",
        label_smoothing_loss,
        ranges={"alpha": Range(0.01, 0.3)},
        tuned=("alpha",),
    ),
)
