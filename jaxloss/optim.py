"""Optimization pieces of the EXACT training recipe: gradient normalization and noise schedules."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxloss import _validation

__all__ = [
    "GradientNormalizerState",
    "gradient_normalizer",
    "temperature_schedule",
    "variance_schedule",
]


class GradientNormalizerState(NamedTuple):
    """State of :func:`gradient_normalizer`: steps taken and the running average of the norm."""

    count: jax.Array
    average_norm: jax.Array


def gradient_normalizer(clip: float = 0.01, momentum: float = 0.9) -> optax.GradientTransformation:
    r"""Divides the updates by a running average of their global norm (EXACT's gradient clipping).

    .. math::

      n_t = \lVert g_t \rVert_2, \quad
      m_1 = n_1, \quad m_t = \beta m_{t-1} + (1 - \beta) n_t, \quad
      g_t \leftarrow g_t / \max(m_t, c).

    EXACT's gradient scale shrinks and grows with the noise temperature, so the recipe normalizes
    it instead of clipping. Chain it before the optimizer, in place of gradient clipping:
    ``optax.chain(gradient_normalizer(), optax.sgd(lr, momentum=0.9))``.

    Args:
      clip: floor :math:`c > 0` of the divisor, so that vanishing gradients are not blown up.
      momentum: :math:`\beta \in [0, 1)` of the running average.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`GradientNormalizerState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxloss.optim import gradient_normalizer
      >>> tx = gradient_normalizer()
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state)
      >>> print(jnp.round(updates["w"], 4))
      [0.6 0.8]
      >>> updates, state = tx.update({"w": jnp.array([33.0, 44.0])}, state)
      >>> print(jnp.round(updates["w"], 4), jnp.round(state.average_norm, 4))
      [3.3 4.4] 10.0

    References:
      Karpukhin, Dereka and Kolesnikov, "EXACT: How to Train Your Accuracy", Pattern Recognition
      Letters, 2024 (``GradientNormalizer`` of the official code).
    """
    _validation.check_in_range("clip", clip, lower=0.0, lower_open=True)
    _validation.check_in_range("momentum", momentum, lower=0.0, upper=1.0, upper_open=True)

    def init_fn(params):
        del params
        return GradientNormalizerState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates).astype(jnp.float32)
        average = jnp.where(
            state.count == 0, norm, momentum * state.average_norm + (1.0 - momentum) * norm
        )
        scale = 1.0 / jnp.maximum(average, clip)
        updates = jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates)
        return updates, GradientNormalizerState(optax.safe_increment(state.count), average)

    return optax.GradientTransformation(init_fn, update_fn)


def _geometric(init_value: float, end_value: float, num_epochs: int, steps_per_epoch: int):
    _validation.check_integer("num_epochs", num_epochs, lower=1)
    _validation.check_integer("steps_per_epoch", steps_per_epoch, lower=1)

    def schedule(step):
        epoch = jnp.asarray(step) // steps_per_epoch
        return init_value * (end_value / init_value) ** (epoch / num_epochs)

    return schedule


def temperature_schedule(
    num_epochs: int,
    steps_per_epoch: int = 1,
    *,
    init_temperature: float = 10.0,
    final_temperature: float = 0.01,
) -> optax.Schedule:
    r"""EXACT's noise std for the UCI recipe: a per-epoch geometric decay.

    .. math::

      T(\text{step}) = T_0 \left(\frac{T_E}{T_0}\right)^{e / E},
      \qquad e = \lfloor \text{step} / \text{steps\_per\_epoch} \rfloor,

    so the first epoch uses :math:`T_0` and the last one (:math:`e = E - 1`) stays slightly above
    :math:`T_E`, as in the reference. Pass the value as ``exact_loss(..., temperature=T)``.

    Args:
      num_epochs: :math:`E`.
      steps_per_epoch: optimizer steps per epoch (the schedule is constant within an epoch).
      init_temperature: :math:`T_0 > 0`.
      final_temperature: :math:`T_E > 0`.

    Returns:
      An optax schedule ``step -> temperature``.

    Example:
      >>> from jaxloss.optim import temperature_schedule
      >>> schedule = temperature_schedule(num_epochs=3, steps_per_epoch=10)
      >>> print([round(float(schedule(s)), 4) for s in (0, 9, 10, 20)])
      [10.0, 10.0, 1.0, 0.1]
    """
    _validation.check_in_range("init_temperature", init_temperature, lower=0.0, lower_open=True)
    _validation.check_in_range("final_temperature", final_temperature, lower=0.0, lower_open=True)
    return _geometric(init_temperature, final_temperature, num_epochs, steps_per_epoch)


def variance_schedule(
    num_epochs: int,
    steps_per_epoch: int = 1,
    *,
    min_variance: float = 1.0,
    init_variance: float = 100.0,
) -> optax.Schedule:
    r"""EXACT's frozen classifier variance for the vision recipe: a per-epoch geometric decay.

    .. math::

      v(\text{step}) = \exp\!\Big(\log v_0 + (\log v_{\min} - \log v_0)\,\frac{e}{E}\Big),
      \qquad e = \lfloor \text{step} / \text{steps\_per\_epoch} \rfloor.

    The variance is not trained (the reference freezes it); the loss uses the noise std
    :math:`T = \sqrt{v}`: ``exact_loss(..., temperature=jnp.sqrt(v))``. The paper's settings:
    ``min_variance`` 1.0 for MNIST, SVHN and CIFAR, 0.0027184 for ImageNet.

    Args:
      num_epochs: :math:`E`.
      steps_per_epoch: optimizer steps per epoch (the schedule is constant within an epoch).
      min_variance: :math:`v_{\min} > 0`, reached after the last epoch.
      init_variance: :math:`v_0 > 0`.

    Returns:
      An optax schedule ``step -> variance``.

    Example:
      >>> from jaxloss.optim import variance_schedule
      >>> schedule = variance_schedule(num_epochs=2, steps_per_epoch=5)
      >>> print([round(float(schedule(s)), 4) for s in (0, 4, 5, 10)])
      [100.0, 100.0, 10.0, 1.0]
    """
    _validation.check_in_range("min_variance", min_variance, lower=0.0, lower_open=True)
    _validation.check_in_range("init_variance", init_variance, lower=0.0, lower_open=True)
    return _geometric(init_variance, min_variance, num_epochs, steps_per_epoch)
