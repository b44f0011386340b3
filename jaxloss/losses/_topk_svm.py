"""Top-k multiclass SVM losses, hard and smooth (Berrada, Zisserman & Kumar, ICLR 2018).

Masking follows optax's ``softmax_cross_entropy_with_integer_labels``: the competitors of the label
are the other classes that ``where`` keeps and whose logit is not ``-inf``; the label's logit
enters as it is, even when its class is masked. A row with fewer than k competitors has loss 0 and
gradient 0 (the missing competitors count as ``-inf``: the label is in the top k whatever its
score), which covers a row with no class left.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxloss import _autodiff, _validation
from jaxloss.losses import _docstrings
from jaxloss.losses._softmax import row_max
from jaxloss.losses._spec import LossSpec, Range
from jaxloss.ops import _esf

# Entries that take no part in the ESF (the label, masked classes) sit this far below the smallest
# competitor, in the ESF's units: exp(-200) vanishes next to the other terms in float32 and float64.
_FAR_BELOW = 200.0


class _Rows(NamedTuple):
    """The validated batch as both losses read it, classes last."""

    inputs: _validation.Prepared
    scores: jax.Array  # (..., C)
    is_label: jax.Array  # (..., C)
    competes: jax.Array  # (..., C): kept, not the label, not -inf
    label_score: jax.Array  # (...,)
    k: int


def _prepare(logits, labels, k, alpha, axis, where, class_axis_name):
    k = _validation.check_integer("k", k, lower=1)
    _validation.check_in_range("alpha", alpha, lower=0.0, finite=True)
    inputs = _validation.prepare(
        logits,
        labels,
        axis=axis,
        where=where,
        min_classes=k + 1,
        class_axis_name=class_axis_name,
    )
    scores = inputs.logits
    is_label = inputs.classes.is_label(inputs.labels, scores.shape[-1])
    competes = ~is_label & (scores != -jnp.inf)
    if inputs.where is not None:
        competes &= inputs.where
    label_score = _score_at(scores, inputs.labels, inputs.classes)
    return _Rows(inputs, scores, is_label, competes, label_score, k)


def _score_at(scores, index, classes):
    """``scores[..., index]`` (a global class index) as a masked sum: differentiable, and under
    ``jax.jit`` the gradient of class-sharded scores stays sharded (a gather's is replicated)."""
    at = classes.is_label(index, scores.shape[-1])
    return classes.sum(jnp.where(at, scores, 0.0))


def _kth_other(rows, scores):
    """k-th largest competitor score (differentiable), and the top k+1 competitor scores."""
    classes = rows.inputs.classes
    others = jnp.where(rows.competes, jax.lax.stop_gradient(scores), -jnp.inf)
    values, index = classes.top_k(others, rows.k + 1)
    return _score_at(scores, index[..., rows.k - 1], classes), values


def _smooth_max(values, tau, classes):
    """``tau * logsumexp(values / tau)`` over the classes of a row, whole or split.

    The values are divided by tau after the max shift, so that no tiny tau overflows them: the
    result tends to the max as tau -> 0.
    """
    top = classes.max(values)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return top + tau * jnp.log(classes.sum(jnp.exp((values - top[..., None]) / tau)))


def _hard(kth, label_score, k, alpha):
    margin = alpha + (kth - label_score) / k
    # The reference's clamp(min=0) passes the gradient at exactly 0 as well; NaN stays NaN.
    return jnp.where(margin < 0, 0.0, margin)


def _finish(rows, loss, few, nan=None):
    """0 where fewer than k competitors remain, NaN where a competitor is NaN (``nan``, where the
    caller knows it)."""
    loss = jnp.where(few, 0.0, loss)
    # lax.top_k ranks NaN above every number, so a NaN competitor must be caught here. A NaN label
    # score propagates through the arithmetic by itself.
    if nan is None:
        nan = rows.inputs.classes.max(jnp.isnan(rows.scores) & rows.competes)
    return rows.inputs.finish(jnp.where(nan, jnp.nan, loss))


@_docstrings.shared_args
def topk_svm_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    k: int,
    alpha: float = 1.0,
    axis: int | tuple[int, ...] = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Hard top-k multiclass SVM loss, the :math:`\tau \to 0` limit of :func:`smooth_topk_svm_loss`.

    .. math::
      \ell_k(s, y) = \max\Big(0,\ \alpha + \frac{t_k - s_y}{k}\Big),
      \qquad t_k = \text{k-th largest of } \{s_j\}_{j \neq y}.

    It is zero once the label is among the top k with a margin of :math:`k\alpha`; for k = 1 it is the
    Crammer-Singer multiclass hinge :math:`\max_j(s_j + \alpha[j \neq y]) - s_y`. The gradient is
    +1/k at the k-th other class and -1/k at the label where the hinge is active (ties are broken
    by ``lax.top_k``, lowest index first). It has no custom VJP: forward mode and ``jax.hessian``
    work (the Hessian is 0 almost everywhere).

    Args:
      logits: scores, shape ``(..., num_classes)`` (classes along ``axis``), num_classes > k.
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      k: how many guesses count, an int >= 1 (required).
      alpha: the margin, >= 0 (a traced array is fine).
      axis: (shared)
      where: (shared) A ``-inf`` logit is excluded too. The label's logit counts even when its class
        is masked; a row with fewer than k other classes left has loss 0 and gradient 0.
      class_axis_name: (shared)

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype: NaN where a logit that takes
      part is NaN; for a ``+inf`` logit, the limit (``+inf`` once it is the k-th other class, 0 at
      the label).

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
    rows = _prepare(logits, labels, k, alpha, axis, where, class_axis_name)
    # The hinge is a difference of two scores: no centring needed, and +inf keeps its limit.
    kth, top = _kth_other(rows, rows.scores)
    few = top[..., rows.k - 1] == -jnp.inf
    return _finish(rows, _hard(kth, rows.label_score, rows.k, alpha), few)


@_autodiff.reverse_mode_only
@_docstrings.shared_args
def smooth_topk_svm_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    k: int,
    alpha: float = 1.0,
    tau: float = 1.0,
    hard_threshold: float | None = 1e3,
    axis: int | tuple[int, ...] = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
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

    For k >= 2 the gradient is :func:`jaxloss.ops.log_esf`'s custom VJP: reverse mode only
    (``jax.grad``; second derivatives by ``jax.jacrev(jax.jacrev(...))``). For k = 1 forward mode
    and ``jax.hessian`` work too.

    Args:
      logits: scores, shape ``(..., num_classes)`` (classes along ``axis``), num_classes > k.
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      k: how many guesses count, an int >= 1 (required).
      alpha: the margin, >= 0.
      tau: the temperature, > 0.
      hard_threshold: the switch's ratio (>= 1), or None to always use the smooth loss.
      axis: (shared)
      where: (shared) A ``-inf`` logit is excluded too. The label's logit counts even when its class
        is masked; a row with fewer than k other classes left has loss 0 and gradient 0.
      class_axis_name: (shared)

    ``alpha``, ``tau`` and ``hard_threshold`` may be traced arrays (``jax.jit`` arguments,
    ``jax.vmap`` over a population); ``k`` is static.

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype: NaN where a logit that takes
      part is NaN; for a ``+inf`` logit, 0 at the label and NaN elsewhere (unless the switch
      picks the hard loss, whose value is then the limit).

    Raises:
      TypeError: under forward-mode differentiation for k >= 2 (see above).

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
    _validation.check_in_range("tau", tau, lower=0.0, lower_open=True, finite=True)
    _validation.check_in_range("hard_threshold", hard_threshold, lower=1.0)
    rows = _prepare(logits, labels, k, alpha, axis, where, class_axis_name)
    if math.prod(rows.label_score.shape) == 0:
        # An empty batch: nothing to select or multiply (the ESF's product tree needs rows).
        return rows.inputs.finish(rows.label_score)
    classes = rows.inputs.classes
    k = rows.k
    # Below the smallest normal number a temperature is flushed to 0 by the hardware; the loss
    # there is the hard one to far below an ulp (as for any tau tiny enough, see below).
    tau = jnp.maximum(tau, jnp.finfo(rows.scores.dtype).tiny)
    # The loss is shift invariant; centring on the finite competitors makes float32 independent
    # of the scores' offset.
    finite = rows.competes & (rows.scores < jnp.inf)
    center = row_max(rows.scores, finite, classes=classes)
    scores = rows.scores - center
    label_score = rows.label_score - center[..., 0]
    # Rows whose hard loss is the value: those the switch picks, and (k >= 2) those whose scores
    # overflow in the units of x = scores / (k tau).
    hard = jnp.zeros(label_score.shape, bool)
    if k == 1:
        # The label's own term is exactly 0, whatever its score.
        d = jnp.where(rows.competes, scores - label_score[..., None] + alpha, -jnp.inf)
        smooth = _smooth_max(jnp.where(rows.is_label, 0.0, d), tau, classes)
    else:
        # The scores of a row span [lowest, 0]. Where that (or alpha / tau, or the label's
        # score) overflows in x, tau is below 1e-38 times the row's spread of scores: the smooth
        # loss is the hard one to within tau * log C(n, k), far below an ulp of it. Those rows
        # take the hard loss, their smooth value with tau = 1 (finite, its gradient too).
        lowest = classes.min(jnp.where(finite, scores, jnp.inf))
        hard = (
            (~jnp.isfinite(lowest / (k * tau)) & (lowest < jnp.inf))
            | ~jnp.isfinite(alpha / tau)
            | (jnp.isfinite(label_score) & ~jnp.isfinite(label_score / (k * tau)))
        )
        tau = jnp.where(hard, 1.0, tau)
        x = scores / (k * tau[..., None])
        lowest = (lowest / (k * tau))[..., None]
        lowest = jnp.where(lowest == jnp.inf, 0.0, lowest)
        # Strictly below every competitor, even where _FAR_BELOW is below an ulp of x: the
        # selected entries above the floor are then the competitors' (x rounds monotonically).
        floor = jnp.minimum(lowest - _FAR_BELOW, jnp.nextafter(lowest, -jnp.inf))
        # The op's unchecked core: the logits were prepared (and k checked) above.
        log_sigma, top_x, _ = _esf.top_k_core(jnp.where(rows.competes, x, floor), k, classes)
        log_ratio = (
            alpha / tau + log_sigma[..., k] - log_sigma[..., k - 1] - label_score / (k * tau)
        )
        smooth = tau * jax.nn.softplus(log_ratio)
    if k == 1:
        few = classes.sum(rows.competes) < k
        nan = None
        if hard_threshold is None:
            return _finish(rows, smooth, few)
        # The others' top k+1 in the units of x = scores / (k tau).
        kth, top = _kth_other(rows, scores)
        top = top / tau
    else:
        # log_esf's own selection: the competitors rank above the floor, the others are missing
        # (-inf). Counted there, not by a pass over the classes.
        top = jnp.where(top_x > floor, top_x, -jnp.inf)
        few = top[..., k - 1] == -jnp.inf
        # A NaN competitor's x is NaN (the others' are numbers), which lax.top_k ranks first: no
        # pass over the classes to find it.
        nan = jnp.isnan(top_x[..., 0])
        # The k-th competitor's score from its x (which carries its gradient), not by a pass over
        # the classes: within an ulp or two of the score.
        kth = top_x[..., k - 1] * (k * tau)
    if hard_threshold is not None:
        # k-th and (k+1)-th of the full row: the label score inserted into the others' sorted
        # top k+1.
        y = jax.lax.stop_gradient(label_score) / (k * tau)
        above = top[..., k - 2] if k > 1 else jnp.inf
        gap = jnp.maximum(top[..., k - 1], jnp.minimum(y, above)) - jnp.maximum(
            top[..., k], jnp.minimum(y, top[..., k - 1])
        )
        hard |= gap >= jnp.log(hard_threshold)
    return _finish(rows, jnp.where(hard, _hard(kth, label_score, k, alpha), smooth), few, nan)


SPECS = (
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
        page="topk_svm",
    ),
    LossSpec(
        "topk_svm",
        topk_svm_loss,
        defaults={"k": 5},
        ranges={"alpha": Range(0.1, 2.0)},
        tuned=("alpha",),
        page="topk_svm",
    ),
)
