"""Losses that reshape the model's confidence: confidence penalty and focal loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss import _validation
from jaxloss.losses import _softmax


def confidence_penalty_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    beta: float,
    axis: int = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    r"""Cross-entropy minus a bonus for the entropy of the prediction.

    .. math::
      \ell(z, y) = -\log p_y - \beta H(p), \qquad H(p) = -\sum_k p_k \log p_k,
      \qquad p = \mathrm{softmax}(z).

    Penalizing low entropy discourages over-confident predictions (Pereyra et al., 2017). Note on
    the seed: the label relaxation code base's ``ConfidencePenaltyLoss`` returns
    :math:`-\log p_y + \beta H(p)`, the opposite sign, which *rewards* confidence; this function
    follows the paper. The seed's numbers can be reproduced as ``ce + beta * entropy``.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      beta: weight of the entropy bonus, ``>= 0``; 0 gives the cross-entropy.
      axis: the class axis of ``logits``.
      where: optional boolean class mask broadcastable to ``logits``; False excludes a class.

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[2.0, 0.0, 0.0]])
      >>> print(jaxloss.confidence_penalty_loss(logits, jnp.array([0]), beta=0.5).tolist())
      [-0.0932]

    References:
      Pereyra et al., `Regularizing Neural Networks by Penalizing Confident Output Distributions
      <https://arxiv.org/abs/1701.06548>`_, ICLR workshop 2017.
    """
    _validation.check_in_range("beta", beta, lower=0.0)
    inputs = _validation.prepare(logits, labels, axis=axis, where=where)
    logits = _softmax.shifted_logits(inputs.logits, inputs.where)
    log_normalizer = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    probs = jnp.exp(logits - log_normalizer)
    # H(p) = log Z - Σ p_k z_k. Masked classes have p = 0 and z = -inf: zero their logit rather
    # than the product, so that neither the value nor the gradient forms 0 * inf.
    finite_logits = jnp.where(jnp.isneginf(logits), 0.0, logits)
    entropy = log_normalizer[..., 0] - jnp.sum(probs * finite_logits, axis=-1)
    ce = log_normalizer[..., 0] - _softmax.label_value(logits, inputs.labels)
    return (ce - beta * entropy).astype(inputs.out_dtype)


def softmax_focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    gamma: float = 2.0,
    alpha: jax.Array | None = None,
    axis: int = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    r"""Multi-class focal loss, computed in log space.

    .. math::
      \ell(z, y) = -\alpha_y (1 - p_y)^\gamma \log p_y, \qquad p = \mathrm{softmax}(z).

    :math:`(1 - p_y)^\gamma` is evaluated as :math:`\exp(\gamma \log(1 - p_y))` with
    :math:`\log(1 - p_y)` a log-sum-exp over the other classes, so well-classified examples keep an
    exact, finite gradient (no probability clipping as in the seed, which clips at 1e-7). With
    ``gamma=0`` and no ``alpha`` it is the cross-entropy.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      gamma: focusing parameter, ``>= 0``.
      alpha: optional per-class weights, shape ``(num_classes,)``, each ``>= 0``.
      axis: the class axis of ``logits``.
      where: optional boolean class mask broadcastable to ``logits``; False excludes a class.

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[2.0, 0.0, 0.0]])
      >>> print(jaxloss.softmax_focal_loss(logits, jnp.array([0]), gamma=2.0).tolist())
      [0.0109]

    References:
      Lin et al., `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_,
      ICCV 2017.
    """
    _validation.check_in_range("gamma", gamma, lower=0.0)
    inputs = _validation.prepare(logits, labels, axis=axis, where=where, min_classes=2)
    logits = _softmax.shifted_logits(inputs.logits, inputs.where)
    log_normalizer = jax.nn.logsumexp(logits, axis=-1)
    log_p_y = _softmax.label_value(logits, inputs.labels) - log_normalizer
    log_rest = _softmax.logsumexp_others(logits, inputs.labels) - log_normalizer
    loss = -jnp.exp(gamma * log_rest) * log_p_y
    if alpha is not None:
        weights = _validation.check_class_vector(
            "alpha", alpha, inputs.num_classes, positive=False
        ).astype(logits.dtype)
        loss = weights[inputs.labels] * loss
    return loss.astype(inputs.out_dtype)
