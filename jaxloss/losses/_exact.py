"""EXACT: the expected error of the classifier whose logits get Gaussian noise."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss import _validation
from jaxloss.ops import gaussian_orthant_probability

__all__ = ["exact_loss"]

# Added to the variance of the normalization, so that constant logits normalize to 0 (and every
# class ties) instead of 0/0.
_NORMALIZE_EPS = 1e-12
# The difference given to classes excluded by `where`: far beyond where Phi saturates to 1.
_EXCLUDED = 1e4


def _normalize(logits, where, axis_name):
    """(z - mean) / std over every element (every example and class), unbiased std."""
    mask = jnp.ones_like(logits, dtype=bool) if where is None else where
    weights = mask.astype(logits.dtype)
    count, total = jnp.sum(weights), jnp.sum(weights * logits)
    if axis_name is not None:
        count, total = lax.psum((count, total), axis_name)
    mean = total / count
    centered = logits - mean
    squares = jnp.sum(weights * centered * centered)
    if axis_name is not None:
        squares = lax.psum(squares, axis_name)
    variance = squares / jnp.maximum(count - 1.0, 1.0)
    return centered * lax.rsqrt(variance + _NORMALIZE_EPS)


def exact_loss(
    logits: Any,
    labels: Any,
    *,
    key: jax.Array | None,
    temperature: Any = None,
    margin: float | None = None,
    sample_size: int = 16,
    normalize_logits: bool | None = None,
    truncate_classes: int | None = None,
    axis: int = -1,
    where: Any = None,
    axis_name: str | None = None,
    method: str = "genz",
) -> jax.Array:
    r"""EXACT loss: one minus the accuracy of the logits under Gaussian noise of std ``temperature``.

    .. math::

      \ell(z, y) = 1 - \Pr\big(\arg\max_k (z_k + T \varepsilon_k) = y\big)
                 = 1 - \Pr\big(\mu + w > 0\big),
      \quad \mu_k = \frac{\min(z_y - z_k,\ m)}{T}\ (k \ne y),
      \quad w \sim \mathcal{N}(0, I + \mathbf{1}\mathbf{1}^\top),

    computed by :func:`jaxloss.ops.gaussian_orthant_probability` (Genz's estimator with a
    stochastic, unbiased gradient, or a deterministic quadrature). Preprocessing follows the
    reference implementation:

    1. with ``normalize_logits`` (default: on when a temperature is given), the logits are
       standardized by the mean and unbiased std of **all** their elements (every example and
       class, masked classes excluded): :math:`z \leftarrow (z - \bar z) / \sqrt{s^2 + 10^{-12}}`.
       The :math:`10^{-12}` (a std floor of :math:`10^{-6}`, as in the reference's vision code)
       keeps constant logits finite: they give :math:`1 - 1/C` and a large but finite gradient. This couples
       the examples: under ``jit`` the statistics are those of the global (possibly sharded) batch;
       inside ``shard_map``/``pmap`` they are per device unless ``axis_name`` names the mapped
       axis, which makes them global (the reference uses per-device statistics);
    2. the differences :math:`z_y - z_k` are clipped from above at ``margin`` (in normalized units;
       the gradient still passes at equality) and divided by the temperature, which may be a
       traced, differentiable scalar.

    The estimate is random: each call draws new uniforms from ``key``. With two classes (or
    ``truncate_classes=1``) and with ``method="quadrature"`` the loss is deterministic and ``key``
    may be None. As in the reference, in float32 badly misclassified rows (some
    :math:`\mu_k \lesssim -8`) give exactly loss 1 and zero gradient with ``method="genz"``; a large
    initial temperature (the recipe starts at 10) and the normalization keep rows out of that
    regime. Cost is :math:`O(B \cdot N \cdot C^2)`: use ``truncate_classes`` (or the quadrature,
    :math:`O(B \cdot C)`) for many classes.

    Args:
      logits: float array of shape ``(..., C)`` (classes along ``axis``), ``C >= 2``.
      labels: integer array of shape ``(...)``.
      key: PRNG key of the Monte-Carlo estimate (None only when the loss is deterministic, see
        above).
      temperature: noise std :math:`T > 0` (scalar; float or traced array). None means noise of
        std 1 in raw logit units and no normalization by default.
      margin: optional upper clip :math:`m` of the differences :math:`z_y - z_k`; requires a
        temperature.
      sample_size: number of samples N of the Genz estimator.
      normalize_logits: standardize the logits over the whole batch first; None follows the
        reference (on iff a temperature is given).
      truncate_classes: if given, only the ``truncate_classes`` strongest competitors of each
        example are integrated: an upper bound on accuracy (lower bound on the loss), much cheaper
        for large C.
      axis: the class axis of ``logits``.
      where: optional boolean mask broadcastable to the logits; False removes a class from the
        competition and from the normalization statistics.
      axis_name: mapped axis name(s) over which the normalization statistics are summed
        (``shard_map``/``pmap``); None uses the local batch.
      method: ``"genz"`` (the reference's estimator) or ``"quadrature"`` (deterministic).

    Returns:
      The per-example loss in [0, 1], shape ``labels.shape``, in the logits' dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.5, 0.0]])
      >>> labels = jnp.array([0, 2])
      >>> loss = jaxloss.exact_loss(logits, labels, key=None, method="quadrature")
      >>> print(f"{loss[0]:.4f} {loss[1]:.4f}")
      0.0885 0.7413
      >>> loss = jaxloss.exact_loss(
      ...     logits, labels, key=jax.random.key(0), temperature=0.5, margin=1.0, sample_size=4096
      ... )
      >>> print(f"{loss[0]:.2f} {loss[1]:.2f}")
      0.13 0.82

    References:
      Karpukhin, Dereka and Kolesnikov, "EXACT: How to Train Your Accuracy", Pattern Recognition
      Letters, 2024. https://arxiv.org/abs/2205.09615
    """
    prepared = _validation.prepare(logits, labels, axis=axis, where=where, min_classes=2)
    z, labels, where = prepared.logits, prepared.labels, prepared.where
    num_classes = prepared.num_classes
    if margin is not None and temperature is None:
        raise ValueError(
            f"margin={margin} requires a temperature: the margin is in normalized-logit units, "
            "which exist only when a temperature is given."
        )
    _validation.check_in_range("temperature", temperature, lower=0.0, lower_open=True)
    _validation.check_in_range("margin", margin)
    if truncate_classes is not None:
        _validation.check_integer("truncate_classes", truncate_classes, lower=1)
    if normalize_logits is None:
        normalize_logits = temperature is not None
    if normalize_logits:
        z = _normalize(z, where, axis_name)

    # Columns of the C - 1 competitors of each example, in increasing class order.
    others = jnp.arange(num_classes - 1)
    others = others + (others >= labels[..., None])
    z_label = jnp.take_along_axis(z, labels[..., None], axis=-1)
    mu = z_label - jnp.take_along_axis(z, others, axis=-1)
    if margin is not None:
        # An upper clip whose gradient still passes at equality, like torch.clip.
        mu = jnp.where(mu > margin, jnp.asarray(margin, mu.dtype), mu)
    if temperature is not None:
        mu = mu / jnp.asarray(temperature, mu.dtype)
    if where is not None:
        competes = jnp.take_along_axis(where, others, axis=-1)
        mu = jnp.where(competes, mu, jnp.asarray(_EXCLUDED, mu.dtype))
    probability = gaussian_orthant_probability(
        mu, key=key, sample_size=sample_size, truncate=truncate_classes, method=method
    )
    return (1.0 - probability).astype(prepared.out_dtype)
