"""The k-th largest entry smoothed by Gaussian noise, with a pathwise (one-hot) gradient."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _autodiff, _validation
from jaxloss.ops import _selection, _special

__all__ = ["noised_topk"]


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer hash with full avalanche (C. Wellons' "lowbias32")."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _standard_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 N(0, 1) draws: a counter hashed with two key-derived words, then an inverse CDF.

    ``jax.random.normal`` spends ~10 ns per draw on CPU in threefry's 20 rounds; the noise of this op
    is B*C*S draws per call, which made the RNG 8x the cost of the top-k itself. Two rounds of a
    32-bit avalanche hash cost ~0.2 ns per draw. The key still fully determines the noise (its two
    words come from threefry), and the tests check the draws' moments, normality and independence.
    """
    size = int(np.prod(shape))
    if size >= 2**32:
        raise ValueError(
            f"noised_topk draws {size} noise values (x.size * sample_size); at most 2**32 - 1 are "
            "supported per call. Split the batch."
        )
    seed = jax.random.bits(key, (2,), jnp.uint32)
    counter = jnp.arange(size, dtype=jnp.uint32).reshape(shape)
    bits = _mix32(_mix32(counter ^ seed[0]) + seed[1])
    # 23 random bits -> a uniform on the open interval (-1, 1), symmetric and exact in float32.
    uniform = ((bits >> 9).astype(jnp.float32) + 0.5) * 2.0**-22 - 1.0
    return np.sqrt(2.0).astype(np.float32) * _special.erf_inv(uniform)


def _kth_of_last_axis(y: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Value and index of the k-th largest entry along the last axis."""
    n = y.shape[-1]
    # The k-th largest is the (n-k+1)-th smallest, the cheaper one to select past the middle.
    if k <= n - k + 1:
        values, indices = _selection.top_k(y, k)
        return values[..., -1], indices[..., -1]
    values, indices = _selection.top_k(-y, n - k + 1)
    return -values[..., -1], indices[..., -1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mean_kth(k, num_classes, y):
    """Mean over the draws (axis -2) of the k-th largest entry of each row of y (..., S, C)."""
    return _mean_kth_fwd(k, num_classes, y)[0]


def _mean_kth_fwd(k, num_classes, y):
    del num_classes
    values, indices = _kth_of_last_axis(y, k)
    return jnp.mean(values, axis=-1), (y, indices)


def _mean_kth_bwd(k, num_classes, residuals, g):
    # The k-th largest of a draw moves one for one with the entry that holds it: a one-hot per
    # draw, averaged over the S draws. x, epsilon and the noise get theirs by the chain rule
    # through y = x + epsilon * noise, outside this rule.
    del k
    y, indices = residuals
    # Reading y (a NaN draw, whose value is overridden by NaN anyway, gets nothing) ties the
    # one-hot to y's layout: with the classes split over devices (many classes), each device
    # builds its own classes' part instead of every device the whole row.
    one_hot = (indices[..., None] == jnp.arange(num_classes)) & (y == y)
    return ((g[..., None, None] / indices.shape[-1] * one_hot).astype(g.dtype),)


_mean_kth.defvjp(_mean_kth_fwd, _mean_kth_bwd)


@_autodiff.reverse_mode_only
def noised_topk(
    x: Any,
    *,
    k: int,
    epsilon: float = 1.0,
    sample_size: int = 5,
    key: jax.Array | None = None,
    noise: Any = None,
    axis: int = -1,
    where: Any = None,
) -> jax.Array:
    r"""The k-th largest entry of ``x`` along ``axis``, smoothed by Gaussian noise.

    A Monte-Carlo estimate of the smoothed k-th largest value with ``S = sample_size`` draws:

    .. math::
      \hat v = \frac{1}{S} \sum_{s=1}^{S} \operatorname{top}_k(x + \epsilon Z_s),
      \qquad \nabla_x \hat v = \frac{1}{S} \sum_{s=1}^{S} e_{\operatorname{idx}_k(x + \epsilon Z_s)},

    with :math:`Z_s \sim \mathcal N(0, I)`. Its expectation :math:`\phi(x) = \mathbb E\,
    \operatorname{top}_k(x + \epsilon Z)` is smooth, and the gradient above (the one-hot of the
    entry that is k-th in each draw) is an unbiased estimate of :math:`\nabla \phi`, a probability
    vector. ``epsilon = 0`` is the exact (hard) k-th largest value and needs no randomness.

    The noise comes from ``key`` (a fast counter-based generator seeded by the key: fresh keys give
    independent draws), or is given as ``noise``. Gradients also flow to a traced ``epsilon``
    (:math:`\frac1S\sum_s Z_{s,\operatorname{idx}_k}`) and to ``noise``.

    Args:
      x: float array of any shape.
      k: which largest entry, ``1 <= k <= x.shape[axis]`` (``k = 1`` is the max).
      epsilon: noise scale, ``>= 0`` (a scalar).
      sample_size: number of noise draws ``S >= 1``.
      key: a PRNG key; exactly one of ``key`` and ``noise`` unless ``epsilon == 0``.
      noise: standard-normal draws of shape ``x.shape + (sample_size,)`` (sample axis last, as in
        the reference implementation) used instead of drawing from ``key``.
      axis: the axis along which the k-th largest is taken.
      where: optional boolean mask broadcastable to ``x``; False entries are excluded (they never
        rank), as are ``-inf`` entries. With fewer than ``k`` entries left the result is
        ``-inf``.

    Returns:
      Array of shape ``x.shape`` without ``axis``, in ``x``'s dtype (16-bit inputs are computed
      in float32). A NaN among the entries that are not masked makes the result NaN; a ``+inf``
      entry ranks first (the result is its limit).

    Raises:
      TypeError: under forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``): the gradient
        is a custom VJP, so only reverse mode is available.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxloss.ops import noised_topk
      >>> x = jnp.array([[-1.5, 2.0, 0.7, 3.8], [-1.1, -5.4, 0.1, 2.3]])
      >>> print(noised_topk(x, k=3, epsilon=0.0))
      [ 0.7 -1.1]
      >>> v = noised_topk(x, k=3, sample_size=10_000, key=jax.random.key(0))
      >>> print([f"{u:.2f}" for u in v])  # the exact expectation is [0.597, -1.257]
      ['0.60', '-1.24']
      >>> def total(x):
      ...     return noised_topk(x, k=3, sample_size=10_000, key=jax.random.key(0)).sum()
      >>> print(jnp.round(jax.grad(total)(x), 1))  # P(entry j is 3rd largest): [.06 .17 .76 .01], [.80 0 .20 0]
      [[0.1 0.2 0.8 0. ]
       [0.8 0.  0.2 0. ]]

    References:
      Berthet et al., `Learning with Differentiable Perturbed Optimizers
      <https://arxiv.org/abs/2002.08676>`_, NeurIPS 2020;
      Garcin et al., `Stochastic smoothing of the top-K calibrated hinge loss for deep imbalanced
      classification <https://arxiv.org/abs/2202.02193>`_, ICML 2022.
    """
    prepared = _validation.prepare(x, axis=axis, where=where, tuple_axis=False)
    values = prepared.logits
    k = _validation.check_integer("k", k, lower=1, upper=prepared.num_classes)
    sample_size = _validation.check_integer("sample_size", sample_size, lower=1)
    if np.ndim(epsilon) != 0:
        raise ValueError(f"epsilon must be a scalar, got shape {np.shape(epsilon)}.")
    _validation.check_in_range("epsilon", epsilon, lower=0)
    if key is not None and noise is not None:
        raise ValueError("Pass either key or noise, not both.")
    exact = not isinstance(epsilon, jax.core.Tracer) and float(epsilon) == 0.0

    draws = None
    if not exact:
        if noise is not None:
            expected = tuple(np.shape(x)) + (sample_size,)
            if tuple(np.shape(noise)) != expected:
                raise ValueError(
                    f"noise must have shape x.shape + (sample_size,) = {expected}, got "
                    f"{tuple(np.shape(noise))}."
                )
            ndim = values.ndim
            # (..., C at `axis`, ..., S) -> (..., S, C): the layout the selection runs on.
            draws = jnp.moveaxis(jnp.asarray(noise), (axis % ndim, ndim), (ndim, ndim - 1))
        elif key is not None:
            draws = _standard_normal(key, values.shape[:-1] + (sample_size, values.shape[-1]))
        else:
            raise ValueError("noised_topk with epsilon > 0 needs a PRNG key or injected noise.")
        draws = draws.astype(values.dtype)
    y = values[..., None, :]
    if draws is not None:
        y = y + jnp.asarray(epsilon, values.dtype) * draws
    nan = jnp.isnan(values)
    if prepared.where is not None:
        y = jnp.where(prepared.where[..., None, :], y, -jnp.inf)
        nan &= prepared.where
    out = _mean_kth(k, values.shape[-1], y)
    # lax.top_k ranks NaN above every number: without this a NaN score would pass as a finite
    # threshold, and a training loop's NaN check would never fire. (B, C), not (B, C, S): cheap.
    out = jnp.where(jnp.any(nan, axis=-1), jnp.nan, out)
    return out.astype(prepared.out_dtype)
