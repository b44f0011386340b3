"""Long-tailed classification by adding the log class prior to the logits (Balanced Softmax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss import _validation
from jaxloss.losses import _softmax


def _log_prior(name: str, values, num_classes: int, dtype) -> jax.Array:
    # Counts are logged in float32 or wider: fp16/bf16 would round them first (2775 -> 2776).
    return jnp.log(_validation.check_class_vector(name, values, num_classes).astype(dtype))


def _adjusted_cross_entropy(logits, labels, *, name, prior, tau, axis, where):
    _validation.check_in_range("tau", tau, lower=0.0)
    inputs = _validation.prepare(logits, labels, axis=axis, where=where)
    shift = tau * _log_prior(name, prior, inputs.num_classes, inputs.logits.dtype)
    # The prior joins after the max shift: z + log n at |z| = 1e4 would round log n to an ulp.
    adjusted = _softmax.shifted_logits(inputs.logits, inputs.where) + shift
    ce = jax.nn.logsumexp(adjusted, axis=-1) - _softmax.label_value(adjusted, inputs.labels)
    return ce.astype(inputs.out_dtype)


def balanced_softmax_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    class_counts: jax.Array,
    axis: int = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    r"""Balanced Softmax: cross-entropy on logits shifted by the log training class counts.

    .. math::
      \ell(z, y) = -\log \frac{n_y e^{z_y}}{\sum_k n_k e^{z_k}}
                 = \mathrm{CE}(z + \log n, y).

    Training with it makes :math:`\mathrm{softmax}(z)` estimate the class-balanced posterior, so
    predict with the raw logits (``argmax z``), never with the shifted ones. The loss is invariant
    to rescaling the counts and equals the cross-entropy for equal counts. It is
    :func:`logit_adjusted_loss` with ``tau=1``.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      class_counts: training examples per class in label order, shape ``(num_classes,)``; every
        count must be positive (a zero count would give an infinite loss).
      axis: the class axis of ``logits``.
      where: optional boolean class mask broadcastable to ``logits``; False excludes a class.

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.zeros((2, 3))
      >>> counts = jnp.array([100.0, 10.0, 1.0])
      >>> loss = jaxloss.balanced_softmax_loss(logits, jnp.array([0, 2]), class_counts=counts)
      >>> print(loss.tolist())
      [0.1044, 4.7095]

    References:
      Ren et al., `Balanced Meta-Softmax for Long-Tailed Visual Recognition
      <https://arxiv.org/abs/2007.10740>`_, NeurIPS 2020.
    """
    return _adjusted_cross_entropy(
        logits, labels, name="class_counts", prior=class_counts, tau=1.0, axis=axis, where=where
    )


def logit_adjusted_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    class_priors: jax.Array,
    tau: float = 1.0,
    axis: int = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    r"""Logit-adjusted cross-entropy: the training-time form of logit adjustment.

    .. math::
      \ell(z, y) = \mathrm{CE}(z + \tau \log \pi, y).

    :math:`\pi` are the training class priors (or counts: the loss is invariant to rescaling
    them). ``tau=1`` is :func:`balanced_softmax_loss`; ``tau=0`` is the cross-entropy.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      class_priors: positive class priors or counts, shape ``(num_classes,)``.
      tau: strength of the adjustment, ``>= 0``.
      axis: the class axis of ``logits``.
      where: optional boolean class mask broadcastable to ``logits``; False excludes a class.

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> priors = jnp.array([0.5, 0.25, 0.25])
      >>> loss = jaxloss.logit_adjusted_loss(jnp.zeros((1, 3)), jnp.array([1]), class_priors=priors)
      >>> print(loss.tolist())
      [1.3863]

    References:
      Menon et al., `Long-tail learning via logit adjustment
      <https://arxiv.org/abs/2007.07314>`_, ICLR 2021.
    """
    return _adjusted_cross_entropy(
        logits, labels, name="class_priors", prior=class_priors, tau=tau, axis=axis, where=where
    )


def logit_adjust(
    logits: jax.Array, *, class_priors: jax.Array, tau: float = 1.0, axis: int = -1
) -> jax.Array:
    r"""Post-hoc logit adjustment: subtract the scaled log prior from a trained model's logits.

    .. math::
      \tilde z = z - \tau \log \pi.

    Use it on a model trained with plain cross-entropy to predict the class-balanced argmax. Do not
    apply it to a model trained with :func:`balanced_softmax_loss` or :func:`logit_adjusted_loss`:
    they already compensate during training.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      class_priors: positive class priors or counts, shape ``(num_classes,)``.
      tau: strength of the adjustment, ``>= 0``.
      axis: the class axis of ``logits``.

    Returns:
      The adjusted logits, same shape and dtype as ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> adjusted = jaxloss.logit_adjust(jnp.zeros(3), class_priors=jnp.array([0.5, 0.25, 0.25]))
      >>> print(adjusted.tolist())
      [0.6931, 1.3863, 1.3863]

    References:
      Menon et al., `Long-tail learning via logit adjustment
      <https://arxiv.org/abs/2007.07314>`_, ICLR 2021.
    """
    _validation.check_in_range("tau", tau, lower=0.0)
    inputs = _validation.prepare(logits, axis=axis)
    shift = tau * _log_prior("class_priors", class_priors, inputs.num_classes, inputs.logits.dtype)
    return jnp.moveaxis(inputs.logits - shift, -1, axis).astype(inputs.out_dtype)
