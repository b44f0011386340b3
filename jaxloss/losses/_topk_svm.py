"""Top-k multiclass SVM losses, hard and smooth (Berrada, Zisserman & Kumar, ICLR 2018)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxloss import _validation
from jaxloss.ops import _esf, _selection

# Excluded entries (the label inside the ESF, masked classes) sit this far below the row minimum in
# scaled units: exp(-200) vanishes next to the other terms in float32 and float64 alike.
_FAR_BELOW = 200.0


def _prepare(logits, labels, k, alpha, axis, where):
    k = _validation.check_integer("k", k, lower=1)
    _validation.check_in_range("alpha", alpha, lower=0.0)
    inputs = _validation.prepare(logits, labels, axis=axis, where=where, min_classes=k + 1)
    scores = inputs.logits
    # The losses are shift invariant; centring makes float32 independent of the scores' offset.
    scores = scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    if inputs.where is not None:
        low = jax.lax.stop_gradient(jnp.min(scores, axis=-1, keepdims=True))
        scores = jnp.where(inputs.where, scores, low - _FAR_BELOW)
    is_label = inputs.labels[..., None] == jnp.arange(inputs.num_classes)
    label_score = jnp.sum(jnp.where(is_label, scores, 0.0), axis=-1)
    return inputs, scores, is_label, label_score, k


def _kth_other(scores, is_label, k):
    """k-th largest score among the non-label classes (differentiable), and the top k+1 of them."""
    others = jnp.where(is_label, -jnp.inf, jax.lax.stop_gradient(scores))
    values, index = _selection.top_k(others, k + 1)
    at_kth = index[..., k - 1 : k] == jnp.arange(scores.shape[-1])
    return jnp.sum(jnp.where(at_kth, scores, 0.0), axis=-1), values


def _hard(kth, label_score, k, alpha):
    margin = alpha + (kth - label_score) / k
    # The reference's clamp(min=0) passes the gradient at exactly 0 as well.
    return jnp.where(margin >= 0, margin, 0.0)


def topk_svm_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    k: int = 5,
    alpha: float = 1.0,
    axis: int = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    r"""Hard top-k multiclass SVM loss, the :math:`\tau \to 0` limit of :func:`smooth_topk_svm_loss`.

    .. math::
      \ell_k(s, y) = \max\Big(0,\ \alpha + \frac{t_k - s_y}{k}\Big),
      \qquad t_k = \text{k-th largest of } \{s_j\}_{j \neq y}.

    It is zero once the label is among the top k with a margin of :math:`k\alpha`; for k = 1 it is the
    Crammer-Singer multiclass hinge :math:`\max_j(s_j + \alpha[j \neq y]) - s_y`. The gradient is
    +1/k at the k-th other class and -1/k at the label where the hinge is active (ties are broken
    by ``lax.top_k``, lowest index first).

    Args:
      logits: scores, shape ``(..., num_classes)`` (classes along ``axis``), num_classes > k.
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      k: how many guesses count, an int >= 1.
      alpha: the margin, >= 0.
      axis: the class axis of ``logits``.
      where: optional boolean class mask broadcastable to ``logits``; False excludes a class. The
        labelled class must not be masked; at least k classes besides it must remain.

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
      >>> print(jnp.round(jaxloss.topk_svm_loss(logits, jnp.array([1, 0]), k=2), 4))
      [0.5 2. ]

    References:
      Lapin, Hein & Schiele, `Top-k Multiclass SVM <https://arxiv.org/abs/1511.06683>`_, NeurIPS
      2015; Berrada, Zisserman & Kumar, `Smooth Loss Functions for Deep Top-k Classification
      <https://arxiv.org/abs/1802.07595>`_, ICLR 2018.
    """
    inputs, scores, is_label, label_score, k = _prepare(logits, labels, k, alpha, axis, where)
    kth, _ = _kth_other(scores, is_label, k)
    return _hard(kth, label_score, k, alpha).astype(inputs.out_dtype)


def smooth_topk_svm_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    k: int = 5,
    alpha: float = 1.0,
    tau: float = 1.0,
    hard_threshold: float | None = 1e3,
    axis: int = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    r"""Smooth top-k SVM loss :math:`L_{k,\tau}` of Berrada et al. (2018).

    The hard loss's max over k-subsets is replaced by a log-sum-exp at temperature :math:`\tau`:

    .. math::
      L_{k,\tau}(s, y) = \tau \log \sum_{|S| = k} e^{(\alpha [y \notin S]
          + \frac1k \sum_{j \in S} s_j)/\tau}
        - \tau \log \sum_{|S| = k,\, y \in S} e^{\frac{1}{k\tau} \sum_{j \in S} s_j}
        = \tau \log\Big(1 + e^{\alpha/\tau}
          \frac{\sigma_k(z)}{e^{s_y/(k\tau)}\, \sigma_{k-1}(z)}\Big),

    with :math:`z_j = e^{s_j/(k\tau)}` over the classes :math:`j \neq y` and :math:`\sigma` the
    elementary symmetric polynomials (:func:`jaxloss.ops.log_esf`, exact value and gradient). For
    k = 1 it is the closed form :math:`\tau\,\mathrm{LSE}_j((s_j + \alpha[j \neq y] - s_y)/\tau)`.
    It is positive, shift invariant, tends to :func:`topk_svm_loss` as :math:`\tau \to 0`, and
    for k = 1, :math:`\alpha = 0`, :math:`\tau = 1` is the cross-entropy.

    Like the reference, a row whose k-th and (k+1)-th largest scores (label included) are at least
    :math:`k\tau\ln(\text{hard\_threshold})` apart uses the hard loss instead (a per-row switch, not
    differentiated, which makes the loss discontinuous there). The reference needs it because its
    gradient is unstable when one subset dominates; this one is not, so ``hard_threshold=None``
    gives the pure smooth loss with no loss of accuracy.

    Args:
      logits: scores, shape ``(..., num_classes)`` (classes along ``axis``), num_classes > k.
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      k: how many guesses count, an int >= 1.
      alpha: the margin, >= 0.
      tau: the temperature, > 0.
      hard_threshold: the switch's ratio (>= 1), or None to always use the smooth loss.
      axis: the class axis of ``logits``.
      where: optional boolean class mask broadcastable to ``logits``; False excludes a class. The
        labelled class must not be masked; at least k classes besides it must remain.

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
      >>> labels = jnp.array([1, 0])
      >>> print(jnp.round(jaxloss.smooth_topk_svm_loss(logits, labels, k=2), 4))
      [1.0633 2.1269]
      >>> print(jnp.round(jaxloss.smooth_topk_svm_loss(logits, labels, k=2, tau=0.01), 4))
      [0.5 2. ]

    References:
      Berrada, Zisserman & Kumar, `Smooth Loss Functions for Deep Top-k Classification
      <https://arxiv.org/abs/1802.07595>`_, ICLR 2018.
    """
    _validation.check_in_range("tau", tau, lower=0.0, lower_open=True)
    _validation.check_in_range("hard_threshold", hard_threshold, lower=1.0)
    inputs, scores, is_label, label_score, k = _prepare(logits, labels, k, alpha, axis, where)
    if k == 1:
        shifted = scores + jnp.where(is_label, 0.0, alpha) - label_score[..., None]
        smooth = tau * jax.nn.logsumexp(shifted / tau, axis=-1)
    else:
        x = scores / (k * tau)
        low = jax.lax.stop_gradient(jnp.min(x, axis=-1, keepdims=True)) - _FAR_BELOW
        log_sigma = _esf.log_esf(jnp.where(is_label, low, x), k)
        log_ratio = (
            alpha / tau + log_sigma[..., k] - log_sigma[..., k - 1] - label_score / (k * tau)
        )
        smooth = tau * jax.nn.softplus(log_ratio)
    if hard_threshold is None:
        return smooth.astype(inputs.out_dtype)
    kth, top = _kth_other(scores, is_label, k)
    # k-th and (k+1)-th of the full row: the label score inserted into the others' sorted top k+1.
    y = jax.lax.stop_gradient(label_score)
    above = top[..., k - 2] if k > 1 else jnp.inf
    gap = jnp.maximum(top[..., k - 1], jnp.minimum(y, above)) - jnp.maximum(
        top[..., k], jnp.minimum(y, top[..., k - 1])
    )
    hard = gap >= k * tau * math.log(hard_threshold)
    return jnp.where(hard, _hard(kth, label_score, k, alpha), smooth).astype(inputs.out_dtype)
