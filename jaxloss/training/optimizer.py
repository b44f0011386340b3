"""The optimizer of a run: the optax transformation and learning-rate schedule an ``optimizer``
config describes (EXACT's gradient normalizer from :mod:`jaxloss.optim`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxloss import optim

__all__ = ["OPTIMIZERS", "SCHEDULES", "make_optimizer"]

#: The learning-rate schedules of ``optimizer.schedule``.
SCHEDULES = ("constant", "step", "cosine", "exponential")
#: The optimizers of ``optimizer.name``.
OPTIMIZERS = ("sgd", "adam")


def _learning_rate(
    config: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int, learning_rate: Any
):
    """An optax schedule of the global step, from an epoch-based description.

    ``learning_rate`` may be a traced scalar (one value per member of a population): every
    schedule here is optax's or ``jax.numpy`` of it, so member i equals a run configured with it.
    """
    lr = learning_rate
    name = config.schedule
    total = steps_per_epoch * num_epochs
    final = config.final_learning_rate
    if name == "constant":
        return lambda step: lr * jnp.ones_like(step, jnp.float32)
    if name == "step":
        # Like torch's MultiStepLR: the factor applies from the start of each boundary epoch.
        return lambda step: (
            lr
            * optax.piecewise_constant_schedule(
                1.0, {int(b) * steps_per_epoch: config.decay_factor for b in config.boundaries}
            )(step)
        )
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, total, alpha=final / lr)
    if name == "exponential":
        # Geometric per epoch, reaching final_learning_rate in the last epoch (EXACT's recipe).
        # Not optax.exponential_decay: it branches in Python on its decay rate, which depends on
        # a traced learning rate here.
        rate = (final / lr) ** (1.0 / max(num_epochs - 1, 1))
        return lambda step: lr * rate ** (step // steps_per_epoch)
    raise ValueError(f"Unknown schedule {name!r}. Available schedules: {', '.join(SCHEDULES)}.")


def _is_kernel(params: Any) -> Any:
    """Weight decay applies to weight matrices and conv kernels, not biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    config: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int,
    num_epochs: int,
    learning_rate: float | jax.Array | None = None,
) -> optax.GradientTransformation:
    """The optax transformation an ``optimizer`` config describes.

    Args:
      config: ``name`` ("sgd" or "adam"), ``learning_rate``, ``momentum`` and ``nesterov`` (sgd),
        ``weight_decay`` (L2 added to the gradient of kernels, as torch's SGD does),
        ``schedule`` (one of :data:`SCHEDULES`) with ``boundaries`` (epochs) and ``decay_factor``
        (step) or ``final_learning_rate`` (cosine, exponential), ``gradient_clip_norm`` (or None)
        and ``gradient_normalizer`` (EXACT's running-norm normalizer instead of clipping).
      steps_per_epoch: optimizer steps in one epoch.
      num_epochs: epochs of the run.
      learning_rate: overrides ``config.learning_rate``; may be traced (a population member's).

    Returns:
      An ``optax.GradientTransformation``; its state's structure does not depend on the learning
      rate, so members with different rates share one state layout.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.training import defaults
      >>> config = defaults.get_config().optimizer
      >>> config.name, config.learning_rate, config.momentum = "sgd", 0.5, 0.0
      >>> config.schedule, config.weight_decay = "constant", 0.0
      >>> tx = make_optimizer(config, steps_per_epoch=10, num_epochs=2)
      >>> params = {"w": jnp.ones(2)}
      >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
      >>> updates["w"].tolist()  # -learning_rate * gradient
      [-0.5, -0.5]
    """
    if learning_rate is None:
        learning_rate = config.learning_rate
    schedule = _learning_rate(config, steps_per_epoch, num_epochs, learning_rate)
    chain = []
    if config.gradient_normalizer:
        chain.append(optim.gradient_normalizer())
    if config.gradient_clip_norm is not None:
        chain.append(optax.clip_by_global_norm(config.gradient_clip_norm))
    if config.weight_decay:
        chain.append(optax.add_decayed_weights(config.weight_decay, mask=_is_kernel))
    name = config.name
    if name == "sgd":
        chain.append(
            optax.sgd(
                schedule,
                momentum=config.momentum or None,
                nesterov=config.nesterov,
            )
        )
    elif name == "adam":
        chain.append(optax.adam(schedule))
    else:
        raise ValueError(
            f"Unknown optimizer {name!r}. Available optimizers: {', '.join(OPTIMIZERS)}."
        )
    return optax.chain(*chain)
