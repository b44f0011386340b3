"""Top-k calibrated hinge losses smoothed by Gaussian noise (Garcin et al., 2022), and LDAM."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _autodiff, _validation
from jaxloss._classes import WHOLE, ClassAxis
from jaxloss.losses import _docstrings
from jaxloss.losses._softmax import cross_entropy
from jaxloss.losses._spec import LossSpec, Range
from jaxloss.ops import _noised_topk

__all__ = [
    "balanced_noised_topk_loss",
    "imbalanced_noised_topk_loss",
    "ldam_loss",
    "ldam_margins",
]


def _hinge_parts(prepared, k, epsilon, sample_size, key, noise, axis):
    """(threshold, true score), both measured from the true score (the label's logit).

    The threshold is the smoothed (k+1)-th largest score, which the true score must clear. The
    hinges are shift invariant; centring on the true score rather than on the row max keeps the
    hinge exact in float32 at any offset, and keeps one huge score from costing the others their
    precision (so the limit at a ``+inf`` logit is exact).
    """
    _validation.check_integer("k", k, lower=1, upper=prepared.num_classes - 1)
    classes = prepared.classes
    # The op's checks of its other arguments, then its unchecked core: no second prepare.
    draws = _noised_topk.check_draws(
        prepared.logits,
        classes,
        epsilon=epsilon,
        sample_size=sample_size,
        key=key,
        noise=noise,
        axis=axis,
    )
    true = classes.label_value(prepared.logits, prepared.labels)
    center = jax.lax.stop_gradient(jnp.where(jnp.isfinite(true), true, 0.0))
    threshold = _noised_topk.kth_core(
        prepared.logits - center[..., None], prepared.where, classes, k + 1, epsilon, *draws
    )
    return threshold, true - center


def _hinge(margin, threshold, true):
    """[margin + threshold - true]_+, 0 (gradient 0) where fewer than k + 1 classes rank."""
    return jnp.where(threshold == -jnp.inf, 0.0, jax.nn.relu(margin + threshold - true))


@_autodiff.reverse_mode_only
@_docstrings.shared_args
def balanced_noised_topk_loss(
    logits: Any,
    labels: Any,
    *,
    k: int,
    epsilon: float,
    sample_size: int = 5,
    key: jax.Array | None = None,
    noise: Any = None,
    axis: int = -1,
    where: Any = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""The top-k calibrated hinge loss, smoothed by Gaussian noise on the scores.

    .. math::
      \ell(s, y) = \left[1 + \hat v_{k+1}(s) - s_y\right]_+,

    where :math:`\hat v_{k+1}` is the Monte-Carlo smoothed (k+1)-th largest score of
    :func:`jaxloss.ops.noised_topk` (``sample_size`` draws of noise of scale ``epsilon``). It is zero
    when the true class is in the top k with a margin of 1. The gradient,
    :math:`\mathbb 1[\ell > 0]\,(\hat p - e_y)`, spreads over every class that may be (k+1)-th under
    the noise instead of a single one. ``epsilon = 0`` is the hard top-k hinge
    :math:`[1 + \operatorname{top}_{k+1}(s) - s_y]_+`. The loss is stochastic: pass a fresh ``key``
    each step (inside ``shard_map``, see :func:`jaxloss.ops.noised_topk` for the noise of split
    classes and rows). ``epsilon`` may be a traced array (``jax.jit`` argument, ``jax.vmap`` over a
    population); ``k`` and ``sample_size`` are static.

    Args:
      logits: scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels, the logits' shape without the class axis.
      k: the top-k target, ``1 <= k <= num_classes - 1``.
      epsilon: noise scale ``>= 0``, in the units of the scores.
      sample_size: noise draws per example.
      key: PRNG key; exactly one of ``key`` and ``noise`` unless ``epsilon == 0``.
      noise: standard-normal draws of shape ``logits.shape + (sample_size,)``.
      axis: the class axis.
      where: (shared) Excluded classes never rank, nor do ``-inf`` logits. The label's logit counts
        even when its class is masked. With k or fewer classes left to rank the loss is 0 with
        gradient 0 (the true class is in the top k whatever its score).
      class_axis_name: (shared)

    Returns:
      Per-example losses, shape of ``labels``, in the logits' dtype: NaN where a logit that takes
      part is NaN; for a ``+inf`` logit, the limit (0 at the label; at another class, the hinge
      with that class ranked first).

    Raises:
      TypeError: under forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``): the gradient
        is the op's custom VJP, so only reverse mode is available.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxloss
      >>> scores = jnp.array([[2.0, 1.5, -3.0], [7.5, 4.0, -1.5]])
      >>> labels = jnp.array([0, 2])
      >>> print(jaxloss.balanced_noised_topk_loss(scores, labels, k=1, epsilon=0.0))
      [0.5 6.5]
      >>> loss = jaxloss.balanced_noised_topk_loss(
      ...     scores, labels, k=1, epsilon=1.0, sample_size=10_000, key=jax.random.key(0))
      >>> print([f"{u:.2f}" for u in loss])  # smoothed 2nd largest of row 0: E = 1.150
      ['0.14', '6.51']

    References:
      Garcin et al., `Stochastic smoothing of the top-K calibrated hinge loss for deep imbalanced
      classification <https://arxiv.org/abs/2202.02193>`_, ICML 2022.
    """
    prepared = _validation.prepare(
        logits,
        labels,
        axis=axis,
        where=where,
        min_classes=2,
        tuple_axis=False,
        class_axis_name=class_axis_name,
    )
    threshold, true = _hinge_parts(prepared, k, epsilon, sample_size, key, noise, axis)
    return prepared.finish(_hinge(1.0, threshold, true))


def ldam_margins(class_counts: Any, *, max_m: float) -> jax.Array:
    r"""Per-class margins that grow for rarer classes, the LDAM rule.

    .. math::
      m_c = m_{\max} \left(\frac{\min_{c'} n_{c'}}{n_c}\right)^{1/4}

    The rarest class gets ``max_m``; a class n times more frequent gets ``max_m / n**0.25``.

    Args:
      class_counts: training examples per class, shape ``(num_classes,)``, all > 0.
      max_m: the margin of the rarest class, ``>= 0``.

    Returns:
      Margins of shape ``(num_classes,)`` (float32, or float64 under x64 for float64 counts).

    Example:
      >>> import jaxloss
      >>> print(jaxloss.ldam_margins([17, 23, 55], max_m=0.3).round(4))
      [0.3    0.2782 0.2237]

    References:
      Cao et al., `Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss
      <https://arxiv.org/abs/1906.07413>`_, NeurIPS 2019.
    """
    if np.ndim(class_counts) != 1:
        raise ValueError(f"class_counts must be a vector, got shape {np.shape(class_counts)}.")
    counts = _validation.check_class_vector("class_counts", class_counts, len(class_counts))
    return _margins(counts, max_m, WHOLE)


def _margins(counts: jax.Array, max_m: Any, classes: ClassAxis) -> jax.Array:
    """:func:`ldam_margins` of checked counts, split like the classes: the rarest class is global."""
    _validation.check_in_range("max_m", max_m, lower=0, finite=True)
    counts = counts.astype(jnp.promote_types(counts.dtype, jnp.float32))
    return max_m * (classes.min(counts) / counts) ** 0.25


@_autodiff.reverse_mode_only
@_docstrings.shared_args
def imbalanced_noised_topk_loss(
    logits: Any,
    labels: Any,
    *,
    class_counts: Any,
    k: int,
    epsilon: float,
    max_m: float,
    scale: float = 50.0,
    sample_size: int = 5,
    key: jax.Array | None = None,
    noise: Any = None,
    axis: int = -1,
    where: Any = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""The smoothed top-k hinge with larger margins for rarer classes, for cosine scores.

    .. math::
      \ell(s, y) = \text{scale}\cdot\left[m_y + \hat v_{k+1}(s) - s_y\right]_+,

    with the LDAM margins :math:`m_c` of :func:`ldam_margins` and the smoothed (k+1)-th largest
    score :math:`\hat v_{k+1}` of :func:`balanced_noised_topk_loss`. It is designed for cosine
    scores in [-1, 1] (e.g. from :class:`jaxloss.nn.CosineClassifier`): ``epsilon`` and the
    margins live on that scale (the paper uses ``epsilon=0.01``, ``max_m=0.2``, ``scale=60``). For
    unnormalized logits set ``scale=1``. ``epsilon``, ``max_m``, ``scale`` and ``class_counts`` may
    be traced arrays; ``k`` and ``sample_size`` are static.

    Args:
      logits: scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels, the logits' shape without the class axis.
      class_counts: training examples per class, shape ``(num_classes,)``, all > 0.
      k: the top-k target, ``1 <= k <= num_classes - 1``.
      epsilon: noise scale ``>= 0``, in the units of the (unscaled) scores.
      max_m: margin of the rarest class, ``>= 0``.
      scale: positive factor on the hinge.
      sample_size: noise draws per example.
      key: PRNG key; exactly one of ``key`` and ``noise`` unless ``epsilon == 0``.
      noise: standard-normal draws of shape ``logits.shape + (sample_size,)``.
      axis: the class axis.
      where: (shared) Excluded classes never rank, nor do ``-inf`` logits. The label's logit counts
        even when its class is masked. With k or fewer classes left to rank the loss is 0 with
        gradient 0 (the true class is in the top k whatever its score).
      class_axis_name: (shared)

    Returns:
      Per-example losses, shape of ``labels``, in the logits' dtype: NaN where a logit that takes
      part is NaN; for a ``+inf`` logit, the limit (0 at the label; at another class, the hinge
      with that class ranked first).

    Raises:
      TypeError: under forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``): the gradient
        is the op's custom VJP, so only reverse mode is available.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> scores = jnp.array([[0.9, 0.5, -0.3], [0.8, 0.4, 0.1]])
      >>> loss = jaxloss.imbalanced_noised_topk_loss(
      ...     scores, jnp.array([0, 2]), class_counts=[17, 23, 55], k=1, epsilon=0.0, max_m=0.3)
      >>> print(jnp.round(loss, 3))  # 50 * [0.3 + 0.5 - 0.9]_+, 50 * [0.2237 + 0.4 - 0.1]_+
      [ 0.    26.184]

    References:
      Garcin et al., `Stochastic smoothing of the top-K calibrated hinge loss for deep imbalanced
      classification <https://arxiv.org/abs/2202.02193>`_, ICML 2022.
    """
    prepared = _validation.prepare(
        logits,
        labels,
        axis=axis,
        where=where,
        min_classes=2,
        tuple_axis=False,
        class_axis_name=class_axis_name,
    )
    classes = prepared.classes
    counts = _validation.check_class_vector(
        "class_counts", class_counts, prepared.logits.shape[-1], classes=classes
    )
    _validation.check_in_range("scale", scale, lower=0, lower_open=True, finite=True)
    margins = _margins(counts, max_m, classes).astype(prepared.logits.dtype)
    threshold, true = _hinge_parts(prepared, k, epsilon, sample_size, key, noise, axis)
    loss = scale * _hinge(classes.take(margins, prepared.labels), threshold, true)
    return prepared.finish(loss)


@_docstrings.shared_args
def ldam_loss(
    logits: Any,
    labels: Any,
    *,
    class_counts: Any,
    max_m: float = 0.5,
    scale: float = 30.0,
    axis: int = -1,
    where: Any = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Label-distribution-aware margin (LDAM) loss: cross-entropy with per-class margins.

    .. math::
      \ell(s, y) = -\log \frac{e^{\text{scale}\,(s_y - m_y)}}
        {e^{\text{scale}\,(s_y - m_y)} + \sum_{c \ne y} e^{\text{scale}\, s_c}}

    with the margins :math:`m_c` of :func:`ldam_margins`: the rarer the true class, the larger the
    margin its score must win by. Meant for cosine scores in [-1, 1] (Cao et al. use ``scale=30``
    with a normalized last layer; the noised top-k paper uses ``max_m=0.2, scale=40``).
    ``max_m``, ``scale`` and ``class_counts`` may be traced arrays. It has no custom VJP: forward
    mode and ``jax.hessian`` work.

    Args:
      logits: scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels, the logits' shape without the class axis.
      class_counts: training examples per class, shape ``(num_classes,)``, all > 0.
      max_m: margin of the rarest class, ``>= 0``.
      scale: positive factor on the scores (the inverse temperature of the softmax).
      axis: the class axis.
      where: (shared: softmax) A ``-inf`` logit is excluded too; a row with no class left gives 0 (here with
        gradient 0).
      class_axis_name: (shared)

    Returns:
      Per-example losses, shape of ``labels``, in the logits' dtype; NaN where a logit that takes
      part is NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> scores = jnp.array([[0.2, 0.1, 0.0]])
      >>> print(jnp.round(jaxloss.ldam_loss(scores, jnp.array([2]), class_counts=[1, 1, 1],
      ...                                   max_m=0.0, scale=1.0), 4))  # plain cross-entropy
      [1.2019]

    References:
      Cao et al., `Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss
      <https://arxiv.org/abs/1906.07413>`_, NeurIPS 2019.
    """
    prepared = _validation.prepare(
        logits, labels, axis=axis, where=where, class_axis_name=class_axis_name
    )
    classes = prepared.classes
    local_classes = prepared.logits.shape[-1]
    counts = _validation.check_class_vector(
        "class_counts", class_counts, local_classes, classes=classes
    )
    _validation.check_in_range("scale", scale, lower=0, lower_open=True, finite=True)
    margins = _margins(counts, max_m, classes).astype(prepared.logits.dtype)
    is_label = classes.is_label(prepared.labels, local_classes)
    # Shift invariant: measured from the true score, the margin is not rounded away at large
    # offsets (at 1e4 a float32 ulp is 1e-3), and a single huge score leaves the others exact.
    true = classes.label_value(prepared.logits, prepared.labels)
    center = jax.lax.stop_gradient(jnp.where(jnp.isfinite(true), true, 0.0))
    shifted = (prepared.logits - center[..., None]) - jnp.where(
        is_label, classes.take(margins, prepared.labels)[..., None], 0.0
    )
    loss = cross_entropy(scale * shifted, prepared.labels, where=prepared.where, classes=classes)
    return prepared.finish(loss)


def _injected_noise(shape, rng, hyperparameters):
    """The noised top-k losses' standard-normal draws, one set per example: they shard with it."""
    draws = rng.standard_normal(tuple(shape) + (hyperparameters["sample_size"],))
    return {"noise": jnp.asarray(draws, jnp.float32), "key": None}


SPECS = (
    LossSpec(
        "balanced_noised_topk",
        balanced_noised_topk_loss,
        defaults={"k": 5, "epsilon": 1.0},
        ranges={"epsilon": Range(0.05, 5.0)},
        tuned=("epsilon",),
        reproducible=_injected_noise,
        page="noised_topk",
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
        page="noised_topk",
    ),
    LossSpec(
        "ldam",
        ldam_loss,
        ranges={"max_m": Range(0.05, 1.0), "scale": Range(10.0, 100.0)},
        tuned=("max_m",),
        logit_scale="scale",
        page="noised_topk",
    ),
)
