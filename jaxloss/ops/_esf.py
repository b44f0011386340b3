r"""Log of the elementary symmetric polynomials of exp(x), with an exact, subtraction-free VJP.

The numerics rest on one observation. Sort the entries, call the k largest the *top* set T and the rest R,
and let w be the largest entry of R. Then every quantity the op needs is a sum of non-negative terms
that are at most a combinatorial constant once it is divided by a known scale:

* the top set's polynomials divided by the product of its j largest terms, :math:`\sigma_j(T)/P_j`, lie in
  :math:`[1, \binom{k}{j}]` (a K-step recursion whose factors :math:`e^{t_l - t_j}` are all <= 1);
* the rest's polynomials of :math:`e^{x_i - w} \le 1` lie in :math:`[0, \binom{n}{j}]` and are formed in
  linear space (√n interleaved chains scanned in √n steps, then a product over the chains;
  prefix and suffix scans backward), which is fast;
* the two are joined through factors :math:`e^{\sum_l (w - t_l)} \le 1` that depend only on local gaps.

So nothing overflows, nothing that matters underflows, no difference of large numbers is formed, and
the precision depends on the gaps between scores, not on their magnitude or offset.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxloss import _autodiff, _validation
from jaxloss.ops import _selection

__all__ = ["log_esf"]

# Largest value the linear-space sums of the rest may reach, as a fraction of the dtype's maximum.
_HEADROOM = 1e-3


@_autodiff.reverse_mode_only
def log_esf(x: jax.Array, k: int, *, axis: int = -1) -> jax.Array:
    r"""Log elementary symmetric polynomials :math:`\log\sigma_0, \dots, \log\sigma_k` of ``exp(x)``.

    .. math::
      \sigma_j(e^x) = \sum_{S \subseteq \{1..n\},\, |S| = j} \exp\Big(\sum_{i \in S} x_i\Big),
      \qquad \frac{\partial \log \sigma_j}{\partial x_i}
        = \frac{e^{x_i}\, \sigma_{j-1}(e^{x_{\setminus i}})}{\sigma_j(e^{x})} \in [0, 1].

    The forward pass selects the k largest entries and combines a k-step log-free recursion on them
    with a linear-space product of the (rescaled) rest in √n chains: O(n k) work, O(√n) sequential depth. The VJP is
    exact and subtraction-free: :math:`\sigma_{j-1}(e^{x_{\setminus i}})` comes from prefix and suffix
    products for the rest and from the same forward recursion on the top set without i. Both are
    shift invariant (:math:`\log\sigma_j(x + c) = \log\sigma_j(x) + jc`) and accurate in float32 for
    any score scale or offset: the error depends on the gaps between entries, not on their size.

    Args:
      x: float array with the n terms along ``axis``; finite values.
      k: highest degree, an int in ``[1, n]``.
      axis: the axis holding the n terms.

    Returns:
      Array of shape ``x.shape`` without ``axis`` plus a trailing axis of size ``k + 1``: entry j is
      :math:`\log\sigma_j(e^x)` (entry 0 is 0), in x's dtype.

    Raises:
      ValueError: k outside ``[1, n]``, or so large for n that :math:`\binom{n}{k}` approaches the
        dtype's range.
      TypeError: under forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``):
        the VJP is custom, so only reverse mode is available (``jax.jacrev(jax.jacrev(...))``
        gives second derivatives).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> x = jnp.log(jnp.array([1.0, 2.0, 3.0]))
      >>> print(jnp.round(jnp.exp(jaxloss.ops.log_esf(x, 3)), 4))  # 1, 1+2+3, 2+3+6, 6
      [ 1.  6. 11.  6.]

    References:
      Berrada, Zisserman & Kumar, `Smooth Loss Functions for Deep Top-k Classification
      <https://arxiv.org/abs/1802.07595>`_, ICLR 2018 (log-space ESF, Sec. 4).
    """
    k = _validation.check_integer("k", k, lower=1)
    inputs = _validation.prepare(x, axis=axis, min_classes=k)
    values = inputs.logits
    n = values.shape[-1]
    limit = _HEADROOM * float(jnp.finfo(values.dtype).max) / 2.0**k
    if n > k and math.comb(n, k) > limit:
        raise ValueError(
            f"k={k} is too large for n={n} terms in {values.dtype}: the rest's sums reach "
            f"C(n, k) = {float(math.comb(n, k)):.3g}, beyond what the dtype holds safely. Use a "
            "smaller k or float64."
        )
    batch_shape = values.shape[:-1]
    flat = values.reshape(-1, n)
    out = _log_esf_rows(k, flat)
    return out.reshape(*batch_shape, k + 1).astype(inputs.out_dtype)


def _ratios(t, xw, e):
    r"""Normalized ESF of the list ``t`` (descending) followed by a rest whose largest entry is xw.

    Args:
      t: the sorted top entries, shape ``(..., K)``.
      xw: the largest entry of the rest, shape ``(...)``, at most ``t[..., -1]``.
      e: list of J + 1 <= K + 1 arrays: the rest's ESF of :math:`e^{x - x_w}`, degrees 0..J.

    Returns:
      ``(r, rho, gap_sums)``: :math:`r_a = \sigma_a(T)/P_a` (a = 0..K), :math:`\rho_j = \sigma_j/P_j`
      (j = 0..J), and ``gap_sums[j][a]`` = :math:`\sum_{l=a+1}^{j} (x_w - t_l)` for a <= j, with
      :math:`P_j = \exp(t_1 + \dots + t_j)`.
    """
    K = t.shape[-1]
    J = len(e) - 1
    top = [t[..., l] for l in range(K)]
    one = jnp.ones_like(xw)
    r = [one] + [jnp.zeros_like(xw)] * K
    for l in range(K):
        # Descending a so that r[a - 1] is still the value before entry l; t_l <= t_a keeps the
        # factor in (0, 1].
        for a in range(l + 1, 0, -1):
            r[a] = r[a] + jnp.exp(top[l] - top[a - 1]) * r[a - 1]
    gap_sums, rho = [], []
    for j in range(J + 1):
        sums = [jnp.zeros_like(xw)] * (j + 1)
        # Summed from a = j down so each partial sum is accurate to its own size.
        for a in range(j - 1, -1, -1):
            sums[a] = sums[a + 1] + (xw - top[a])
        gap_sums.append(sums)
        rho.append(sum(r[a] * e[j - a] * jnp.exp(sums[a]) for a in range(j + 1)))
    return r, rho, gap_sums


def _poly_mul(p, q, degree):
    """Product of two polynomials with constant term 1, given by coefficients 1..d, truncated."""
    out = []
    for m in range(1, degree + 1):
        c = (p[m - 1] if m <= len(p) else 0) + (q[m - 1] if m <= len(q) else 0)
        for a in range(1, m):
            if a <= len(p) and m - a <= len(q):
                c = c + p[a - 1] * q[m - a - 1]
        out.append(c)
    return out


def _times_linear(coeffs, v):
    """(1 + c_1 T + ...) (1 + v T), truncated to the same degree."""
    return [coeffs[0] + v] + [coeffs[m] + v * coeffs[m - 1] for m in range(1, len(coeffs))]


def _chains(y):
    """(M, n) -> (L, M, G), zero padded: chain g holds entries g, G + g, 2G + g, ...

    ESFs do not depend on the order of the entries, so interleaved chains are as good as blocks and
    each step of a scan over L reads one contiguous slice of every row.
    """
    rows, n = y.shape
    chains = max(1, math.isqrt(n))
    length = -(-n // chains)
    y = jnp.pad(y, ((0, 0), (0, length * chains - n)))
    return y.reshape(rows, length, chains).transpose(1, 0, 2)


def _scan_product(polys, degree, reverse=False):
    """Sequential product over the leading axis of polynomials (coefficient lists), exclusive."""
    init = [jnp.zeros_like(polys[0][0])] * degree

    def step(carry, poly):
        return _poly_mul(carry, list(poly), degree), carry

    return lax.scan(step, init, tuple(polys), reverse=reverse)


def _chain_scan(chained, degree, reverse=False):
    init = [jnp.zeros_like(chained[0])] * degree
    return lax.scan(lambda c, v: (_times_linear(c, v), c), init, chained, reverse=reverse)


def _rest_esf(y, degree):
    """ESF 1..degree of y >= 0 along the last axis of (M, n), in linear space: O(n k) work."""
    totals, _ = _chain_scan(_chains(y), degree)
    product, _ = _scan_product([t.T for t in totals], degree)
    return product


def _rest_esf_without_each(y, degree):
    """ESF 1..degree of y without entry i, for every i: list of (M, n) arrays, subtraction-free."""
    rows, n = y.shape
    chained = _chains(y)
    totals, before = _chain_scan(chained, degree)
    _, after = _chain_scan(chained, degree, reverse=True)
    same_chain = _poly_mul(before, after, degree)
    per_chain = [t.T for t in totals]
    _, chains_before = _scan_product(per_chain, degree)
    _, chains_after = _scan_product(per_chain, degree, reverse=True)
    other_chains = [c.T[None] for c in _poly_mul(chains_before, chains_after, degree)]
    out = _poly_mul(same_chain, other_chains, degree)
    length, _, chains = chained.shape
    return [c.transpose(1, 0, 2).reshape(rows, length * chains)[:, :n] for c in out]


def _split(x, K):
    """Top-K entries (descending) with their indices, the rest's largest entry, and its ESF."""
    n = x.shape[-1]
    values, index = _selection.top_k(x, min(K + 1, n))
    t, top_index = values[..., :K], index[..., :K]
    if n > K:
        xw = values[..., K]
        in_top = jnp.any(top_index[..., :, None] == jnp.arange(n), axis=-2)
        # min(., 0) keeps the discarded top entries from overflowing exp.
        y = jnp.where(in_top, 0.0, jnp.exp(jnp.minimum(x - xw[..., None], 0.0)))
        e = [jnp.ones_like(xw)] + _rest_esf(y, K)
    else:
        xw, y = t[..., -1], None
        e = [jnp.ones_like(xw)] + [jnp.zeros_like(xw)] * K
    return t, top_index, xw, y, e


def _assemble(t, rho):
    cumulative = jnp.cumsum(t, axis=-1)
    logs = [jnp.zeros_like(rho[0])] + [
        cumulative[..., j - 1] + jnp.log(rho[j]) for j in range(1, len(rho))
    ]
    return jnp.stack(logs, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _log_esf_rows(K, x):
    t, _, xw, _, e = _split(x, K)
    _, rho, _ = _ratios(t, xw, e)
    return _assemble(t, rho)


def _log_esf_fwd(K, x):
    t, top_index, xw, y, e = _split(x, K)
    r, rho, gap_sums = _ratios(t, xw, e)
    return _assemble(t, rho), (t, top_index, xw, y, e, r, rho, gap_sums)


def _log_esf_bwd(K, residuals, cotangent):
    t, top_index, xw, y, e, r, rho, gap_sums = residuals
    n = y.shape[-1] if y is not None else K
    g = [cotangent[..., j] for j in range(K + 1)]

    # Top entry i: sigma_{j-1} without i is the forward recursion on T \ {i} plus the same rest, and
    # its scale P'_{j-1} differs from P_j by exp(t_i) exactly when i <= j, by exp(t_i - t_j) otherwise.
    keep = np.array([[l + (l >= i) for l in range(K - 1)] for i in range(K)], dtype=np.int32)
    t_without = t[..., keep] if K > 1 else t[..., :0][..., None, :]
    _, rho_without, _ = _ratios(t_without, xw[..., None], [c[..., None] for c in e[:K]])
    grad_top = jnp.zeros_like(t)
    for j in range(1, K + 1):
        scale = jnp.exp(jnp.minimum(t - t[..., j - 1 : j], 0.0))
        grad_top = grad_top + (g[j] / rho[j])[..., None] * rho_without[j - 1] * scale
    # top_index holds K distinct positions per row, so this one-hot sum is a scatter.
    positions = top_index[..., :, None] == jnp.arange(n)
    grad = jnp.sum(jnp.where(positions, grad_top[..., :, None], 0.0), axis=-2)
    if y is None:
        return (grad,)

    # Rest entry i: d log sigma_j / d x_i = y_i sum_a c[a, j] e_{j-1-a}(R \ i), c[a, j] =
    # r_a exp(gap_sums[j][a]) / rho_j <= C(k, a); fold the cotangent in first: weights D_m.
    weights = [
        sum(
            g[j] * r[j - 1 - m] * jnp.exp(gap_sums[j][j - 1 - m]) / rho[j]
            for j in range(m + 1, K + 1)
        )
        for m in range(K)
    ]
    if K == 1:
        return (grad + y * weights[0][..., None],)
    without = _rest_esf_without_each(y, K - 1)
    total = weights[0][..., None] + sum(weights[m][..., None] * without[m - 1] for m in range(1, K))
    return (grad + y * total,)


_log_esf_rows.defvjp(_log_esf_fwd, _log_esf_bwd)
