r"""Log of the elementary symmetric polynomials of exp(x), with an exact, subtraction-free VJP.

The numerics rest on one observation. Sort the entries, call the k largest the *top* set T and the rest R,
and let w be the largest entry of R. Then every quantity the op needs is a sum of non-negative terms
that are at most a combinatorial constant once it is divided by a known scale:

* the top set's polynomials divided by the product of its j largest terms, :math:`\sigma_j(T)/P_j`, lie in
  :math:`[1, \binom{k}{j}]` (a K-step recursion whose factors :math:`e^{t_l - t_j}` are all <= 1);
* the rest's polynomials of :math:`e^{x_i - w} \le 1` lie in :math:`[0, \binom{n}{j}]` and are formed in
  linear space by a tree of pairwise polynomial products (log n levels of multiply-adds, walked
  back down for the gradient), which is fast;
* the two are joined through factors :math:`e^{\sum_l (w - t_l)} \le 1` that depend only on local gaps.

So nothing overflows, nothing that matters underflows, no difference of large numbers is formed, and
the precision depends on the gaps between scores, not on their magnitude or offset.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss import _autodiff, _classes, _fusion, _validation

__all__ = ["log_esf", "log_esf_and_top_k", "top_k_core"]

# Largest value the linear-space sums of the rest may reach, as a fraction of the dtype's maximum.
_HEADROOM = 1e-3


@_autodiff.reverse_mode_only
def log_esf(
    x: jax.Array, k: int, *, axis: int = -1, class_axis_name: str | None = None
) -> jax.Array:
    r"""Log elementary symmetric polynomials :math:`\log\sigma_0, \dots, \log\sigma_k` of ``exp(x)``.

    .. math::
      \sigma_j(e^x) = \sum_{S \subseteq \{1..n\},\, |S| = j} \exp\Big(\sum_{i \in S} x_i\Big),
      \qquad \frac{\partial \log \sigma_j}{\partial x_i}
        = \frac{e^{x_i}\, \sigma_{j-1}(e^{x_{\setminus i}})}{\sigma_j(e^{x})} \in [0, 1].

    The forward pass selects the k largest entries and combines a k-step log-free recursion on them
    with a tree of linear-space polynomial products over the (rescaled) rest: O(n k) work, O(log n)
    sequential depth. The VJP is exact: for a top entry, :math:`\sigma_{j-1}(e^{x_{\setminus i}})` comes
    from the same forward recursion on the top set without i (subtraction-free); for the rest, the
    cotangent is folded in first and carried back down the same tree, so each gradient is a sum of
    the tree's non-negative products weighted by the cotangent. Both are shift invariant
    (:math:`\log\sigma_j(x + c) = \log\sigma_j(x) + jc`) and accurate in float32 for any score
    scale or offset: the error depends on the gaps between entries, not on their size.
    Under ``jax.jit`` with the n terms split across devices (class-sharded logits), each device
    selects its own top candidates and multiplies its own neighbouring terms: only k + 1 candidates
    and the last tree levels' k coefficients per device and row cross devices. Inside
    ``jax.shard_map`` with ``class_axis_name``, the same happens explicitly: each device reduces
    its own block to k coefficients, and the devices' coefficients are multiplied by the same
    tree.

    Args:
      x: float array with the n terms along ``axis``; finite values.
      k: highest degree, an int in ``[1, n]``.
      axis: the axis holding the n terms.
      class_axis_name: inside ``jax.shard_map``, the mesh axis that ``axis`` is split over (each
        device holding a contiguous block of the n terms), or None (the default) for whole rows.
        Under plain ``jax.jit`` leave it None: XLA splits sharded terms itself.

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
    return log_esf_and_top_k(x, k, axis=axis, class_axis_name=class_axis_name)[0]


def log_esf_and_top_k(
    x: jax.Array, k: int, *, axis: int = -1, class_axis_name: str | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`log_esf`, and the min(k + 1, n) largest entries that it selected with their indices.

    For callers that need the top k + 1 as well: one selection serves both. The entries are
    differentiable as ``lax.top_k``'s are. The checks, then :func:`top_k_core`.

    Returns:
      ``(log_sigma, values, indices)``: :func:`log_esf`'s output, and the largest entries along
      ``axis`` (descending) and their indices (global ones under ``class_axis_name``), both of
      shape ``x.shape`` without ``axis`` plus a trailing axis of size min(k + 1, n).
    """
    k = _validation.check_integer("k", k, lower=1)
    inputs = _validation.prepare(x, axis=axis, min_classes=k, class_axis_name=class_axis_name)
    log_sigma, top, top_index = top_k_core(inputs.logits, k, inputs.classes)
    return log_sigma.astype(inputs.out_dtype), top, top_index


def top_k_core(
    values: jax.Array, k: int, classes: _classes.ClassAxis
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`log_esf_and_top_k` without its checks, for callers that prepared their inputs.

    The smooth top-k loss prepares its logits (and checks k) itself, and its hard switch needs the
    top k + 1 as well: it calls this core, so that nothing is validated twice.

    Args:
      values: the n terms along the last axis, in the compute dtype (as ``prepare`` leaves
        them).
      k: highest degree, an int in ``[1, n]`` (checked by the caller).
      classes: how the last axis is laid out (whole, or split over ``classes.name``).

    Returns:
      ``(log_sigma, values, indices)``: :func:`log_esf`'s output in ``values``' dtype, and the
      largest entries (descending) and their indices (global ones when split), both of shape
      ``values.shape[:-1]`` plus a trailing axis of size min(k + 1, n).

    Raises:
      ValueError: k so large for n that C(n, k) approaches the dtype's range (a limit of the
        algorithm, which no caller checks).
    """
    n = classes.global_size(values.shape[-1])
    limit = _HEADROOM * float(jnp.finfo(values.dtype).max) / 2.0**k
    if n > k and math.comb(n, k) > limit:
        raise ValueError(
            f"k={k} is too large for n={n} terms in {values.dtype}: the rest's sums reach "
            f"C(n, k) = {float(math.comb(n, k)):.3g}, beyond what the dtype holds safely. Use a "
            "smaller k or float64."
        )
    batch_shape = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1])
    out, top, top_index = _log_esf_rows(k, classes, flat)
    top, top_index = (a.reshape(*batch_shape, -1) for a in (top, top_index))
    return out.reshape(*batch_shape, k + 1), top, top_index


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
    """Product of two polynomials with constant term 1, given by coefficients 1..d stacked on the
    leading axis, truncated to ``degree``; over an odd number (> 1) of products, one more
    product, the polynomial 1, so that the next level pairs them all."""
    out = []
    for m in range(1, degree + 1):
        c = (p[m - 1] if m <= len(p) else 0) + (q[m - 1] if m <= len(q) else 0)
        for a in range(1, m):
            if a <= len(p) and m - a <= len(q):
                c = c + p[a - 1] * q[m - a - 1]
        out.append(c)
    out = jnp.stack(out)
    if out.shape[-1] > 1 and out.shape[-1] % 2:
        # Padded here, in the same pass: a pad of the level written out would copy it again.
        out = jnp.pad(out, ((0, 0), (0, 0), (0, 1)))
    # The barrier keeps each level of a product tree one materialized array: without it XLA fuses
    # every level into the next ones and recomputes it (8x the flops at n = 1000).
    return lax.optimization_barrier(out)


def _product_tree(level, degree):
    """Bottom-up tree of pairwise products of the polynomials of a level, over its last axis.

    The leaves are polynomials with constant term 1, their coefficients 1..d stacked on the
    leading axis of ``level``, (d, M, width): the terms y as ``y[None]`` (1 + y_i T), or the
    devices' roots of their own trees. Each node multiplies two neighbours: O(log n) levels,
    O(n k) work in all, and a level split in contiguous blocks (class-sharded logits) stays split
    the same way until its width is the number of blocks, so XLA's partitioner only moves the
    last few levels' nodes between devices.

    Returns:
      ``(root, levels)``: the product truncated to ``degree`` (the ESF 1..degree of y), shape
      (degree, M) (fewer coefficients if the leaves have fewer in all), and every level below the
      root as the neighbours that were multiplied, (d, M, width, 2).
    """
    levels = []
    while level.shape[-1] > 1:
        if level.shape[-1] % 2:  # one more leaf, the polynomial 1 (_poly_mul pads the nodes)
            level = jnp.pad(level, ((0, 0), (0, 0), (0, 1)))
        pairs = level.reshape(*level.shape[:-1], -1, 2)
        levels.append(pairs)
        level = _written_once(
            functools.partial(_poly_mul, degree=min(degree, 2 * len(level))), pairs
        )
    return level[..., 0], levels


def _written_once(mul, pairs):
    """``mul(pairs[..., 0], pairs[..., 1])``, a wide level computed apart (:func:`_fusion.apart`).

    Inline, XLA:CPU computed every level wider than 32 pairs twice, once for the next level and
    once in the layout the VJP reads (190 us at 256 x 1000); one branch per level, since the whole
    tree in one still computed its first level twice (100 us).
    """

    def both(pairs):
        return mul(pairs[..., 0], pairs[..., 1])

    if pairs.shape[-2] <= 32:  # narrow levels: not recomputed, and a branch costs more
        return both(pairs)
    return _fusion.apart(both, pairs)


def _poly_mul_transpose(u, s, degree):
    """The cotangent of p in p * s, truncated: u_a + sum_b u_b s_{b-a} for a = 1..degree.

    ``u`` holds the cotangents of the product's coefficients 1..len(u), ``s`` the coefficients
    1..len(s) of the other factor (constant 1), both stacked on the leading axis.
    """
    out = []
    for a in range(1, degree + 1):
        c = u[a - 1]
        for b in range(a + 1, len(u) + 1):
            if b - a <= len(s):
                c = c + u[b - 1] * s[b - a - 1]
        out.append(c)
    return lax.optimization_barrier(jnp.stack(out))  # as in _poly_mul


def _tree_vjp(levels, cotangent):
    r"""The cotangents of a product tree's leaves from those of its root.

    Walked down the tree's ``levels``: a node's cotangents times its sibling are its child's, and
    a leaf (or subtree) with d coefficients needs only d of them, so on leaves 1 + y_i T the widest
    levels cost one multiply-add per entry. For cotangents w_m of the root's coefficients, the
    leaf 1 + y_i T gets :math:`\sum_m w_m e_{m-1}(y_{\setminus i})`, the derivative of
    :math:`\sum_m w_m e_m(y)` by y_i.

    Args:
      levels: the tree's levels, as :func:`_product_tree` returns them.
      cotangent: the root's, (d, M, 1).

    Returns:
      The leaves', (d_leaf, M, width), width including any padding leaf.
    """
    for pairs in reversed(levels):
        # The level above may carry one padding node that has no children here; both children
        # start from their parent's cotangents.
        cotangent = jnp.repeat(cotangent[..., : pairs.shape[-2], None], 2, axis=-1)
        cotangent = _poly_mul_transpose(cotangent, pairs[..., ::-1], pairs.shape[0])
        cotangent = cotangent.reshape(*cotangent.shape[:-2], -1)
    return cotangent


def _split(x, values, index, K, classes):
    """Top-K entries (descending) with their indices, the rest's largest entry, the rest rescaled
    by it (y) with its product trees, and its ESF.

    The rest's ESF is the product of the devices' own (one device for whole rows): each device's
    tree reduces its block of y to a root of K coefficients, and a second tree multiplies the
    gathered roots (K x devices per row). Returns both trees' levels, the device's own first.
    """
    n = x.shape[-1]
    t, top_index = values[..., :K], index[..., :K]
    if classes.global_size(n) > K:
        xw = values[..., K]
        positions = classes.indices(n)
        in_top = top_index[..., :1] == positions
        for a in range(1, K):  # a chain of compares, not a (..., K, n) array
            in_top |= top_index[..., a : a + 1] == positions
        # min(., 0) keeps the discarded top entries from overflowing exp.
        y = jnp.where(in_top, 0.0, jnp.exp(jnp.minimum(x - xw[..., None], 0.0)))
        rest, levels = _product_tree(y[None], K)
        rest, device_levels = _product_tree(classes.whole(rest[..., None]), K)
        e = [jnp.ones_like(xw), *rest]
        levels = (levels, device_levels)
    else:
        xw, y, levels = t[..., -1], None, None
        e = [jnp.ones_like(xw)] + [jnp.zeros_like(xw)] * K
    return t, top_index, xw, y, levels, e


def _assemble(t, rho):
    cumulative = jnp.cumsum(t, axis=-1)
    logs = [jnp.zeros_like(rho[0])] + [
        cumulative[..., j - 1] + jnp.log(rho[j]) for j in range(1, len(rho))
    ]
    return jnp.stack(logs, axis=-1)


def _selected(K, classes, x):
    """The top min(K + 1, n) entries of the rows of x and their (global) indices."""
    return classes.top_k(x, min(K + 1, classes.global_size(x.shape[-1])))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _log_esf_rows(K, classes, x):
    """log_esf of the rows of x, and the top min(K + 1, n) entries and indices it selected."""
    top, index = _selected(K, classes, x)
    t, _, xw, _, _, e = _split(x, top, index, K, classes)
    _, rho, _ = _ratios(t, xw, e)
    return _assemble(t, rho), top, index


def _log_esf_fwd(K, classes, x):
    top, index = _selected(K, classes, x)
    t, _, xw, y, levels, e = _split(x, top, index, K, classes)
    r, rho, gap_sums = _ratios(t, xw, e)
    return (_assemble(t, rho), top, index), (t, index, xw, y, levels, e, r, rho, gap_sums)


def _log_esf_bwd(K, classes, residuals, cotangents):
    cotangent, top_cotangent, _ = cotangents
    t, index, xw, y, levels, e, r, rho, gap_sums = residuals
    # Without a rest, the n = K terms are the top set.
    n = y.shape[-1] if y is not None else K // classes.shards
    # This device's positions of the selected entries; those of other devices fall outside.
    index = index - classes.indices(n)[0]
    top_index = index[..., :K]
    g = [cotangent[..., j] for j in range(K + 1)]

    # Top entry i: sigma_{j-1} without i is the forward recursion on T \ {i} plus the same rest, and
    # its scale P'_{j-1} differs from P_j by exp(t_i) exactly when i <= j, by exp(t_i - t_j) otherwise.
    # The K lists T \ {i} stacked on a leading axis (slices, not a gather: the rows stay in the
    # vector lanes of the arithmetic below).
    t_without = jnp.stack(
        [jnp.concatenate([t[..., :i], t[..., i + 1 :]], axis=-1) for i in range(K)]
    )
    _, rho_without, _ = _ratios(t_without, xw[None], [c[None] for c in e[:K]])
    grad_top = sum(
        (g[j] / rho[j])[..., None]
        * jnp.moveaxis(rho_without[j - 1], 0, -1)
        * jnp.exp(jnp.minimum(t - t[..., j - 1 : j], 0.0))
        for j in range(1, K + 1)
    )

    def with_top(grad):
        # top_index holds K distinct positions per row, where the rest's part is 0. A scatter
        # computes grad_top once; a select per class would redo its arithmetic for every class.
        rows = jnp.arange(grad.shape[0])[:, None]
        at = dict(unique_indices=True, mode="drop", wrap_negative_indices=False)
        grad = grad.at[rows, top_index].set(grad_top, **at)
        # The selected entries themselves are x's entries at their indices.
        return grad.at[rows, index].add(top_cotangent, **at)

    if y is None:
        return (with_top(jnp.zeros(t.shape[:-1] + (n,), t.dtype)),)

    # Rest entry i: d log sigma_j / d x_i = y_i sum_a c[a, j] e_{j-1-a}(R \ i), c[a, j] =
    # r_a exp(gap_sums[j][a]) / rho_j <= C(k, a); fold the cotangent in first: weights D_m. Then
    # sum_m D_m e_m(R \ i) is the derivative of sum_m D_m e_{m+1}(R) by y_i: one reverse pass
    # through the product trees: the devices' tree first, whose leaf classes.indices(1) (one leaf
    # per device, in device order) is this device's root, then this device's own.
    weights = [
        sum(
            g[j] * r[j - 1 - m] * jnp.exp(gap_sums[j][j - 1 - m]) / rho[j]
            for j in range(m + 1, K + 1)
        )
        for m in range(K)
    ]
    levels, device_levels = levels
    root = _tree_vjp(device_levels, jnp.stack(weights)[..., None])
    root = lax.dynamic_slice_in_dim(root, classes.indices(1)[0], 1, axis=-1)
    return (with_top(y * _tree_vjp(levels, root)[0, :, :n]),)


_log_esf_rows.defvjp(_log_esf_fwd, _log_esf_bwd)
