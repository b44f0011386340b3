"""Positive-orthant probability of N(mu, I + 11^T): Genz's estimator and a quadrature rule."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy import special

from jaxloss import _autodiff, _classes, _selection, _validation
from jaxloss.ops import _special

__all__ = ["check_key", "gaussian_orthant_probability", "orthant_core"]

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Draws are clipped to [-5, 5] as in the reference: erfinv(+-1) is infinite.
_DRAW_CLIP = 5.0
# Gradient channel j runs only the steps after j, so the steps are cut into blocks and block c only
# carries the channels born before its end: about (1 + 1/_BLOCKS)/2 of the full work. Blocks are at
# least _MIN_BLOCK steps long, to keep short rows to one compiled loop.
_BLOCKS = 16
_MIN_BLOCK = 8
# Gauss-Hermite rule of the quadrature (weight exp(-t^2/2)): the nodes whose weight is below 1e-17
# are dropped (52 of 96 are kept); against 200 nodes the error is <= 1e-12 except for long rows
# of near ties (1e-8 for 99 entries within +-0.1 of each other).
_QUADRATURE_NODES = 96
_QUADRATURE_MIN_WEIGHT = 1e-17
_METHODS = ("genz", "quadrature")
# Entries are clipped to +-_SATURATED: Phi is exactly 0 or 1 (and phi exactly 0) beyond it in every
# float type, so the clip changes no value and no gradient of a finite entry, and it turns +-inf
# into their limits (the quadrature's inverse Mills ratio would be inf - inf at -inf).
_SATURATED = 1e4


def _cholesky_constants(dim: int, dtype) -> tuple[jax.Array, jax.Array]:
    """1 / l_i and alpha_i: the inverse diagonal and the sub-diagonal column value of the Cholesky
    factor of I + 11^T (inverted once here, so that every step multiplies instead of dividing)."""
    i = np.arange(dim, dtype=np.float64)
    inverse_diagonal = np.sqrt((i + 1.0) / (i + 2.0))
    below = 1.0 / np.sqrt((i + 1.0) * (i + 2.0))
    return jnp.asarray(inverse_diagonal, dtype), jnp.asarray(below, dtype)


def _genz_step(partial_sum, product, mu_i, u_i, inverse_l_i, alpha_i):
    """One step of the estimator: its limit, then the partial sum and the product after it."""
    # A product, not a quotient: XLA:CPU fuses a multiply into each consumer instead of writing
    # the limits out and reading them back.
    limit = (-mu_i - partial_sum) * inverse_l_i
    # float32 erf can land one rounding step outside [-1, 1], where erfinv is NaN.
    e = jnp.clip(lax.erf(limit / _SQRT2), -1.0, 1.0)
    draw = jnp.clip(_SQRT2 * _special.erf_inv(e + u_i * (1.0 - e)), -_DRAW_CLIP, _DRAW_CLIP)
    return limit, partial_sum + alpha_i * draw, product * (0.5 * (1.0 - e))


def _genz_base(inputs, zeros, *, with_gradient: bool):
    """The estimator's own run over every step: the products (N, B) after the last, and, with
    the gradient, each gradient channel's state just after the step at which it is born (k, N,
    B) twice: its draw there pinned to the limit, its factor the density of the limit."""

    def step(carry, inputs):
        partial_sum, product = carry
        mu_i, u_i, inverse_l_i, alpha_i = inputs
        limit, *after = _genz_step(partial_sum, product, mu_i, u_i, inverse_l_i, alpha_i)
        if not with_gradient:
            return tuple(after), None
        density = jnp.exp(-0.5 * limit * limit) * (_INV_SQRT_2PI * inverse_l_i)
        pinned = jnp.clip(limit, -_DRAW_CLIP, _DRAW_CLIP)
        return tuple(after), (partial_sum + alpha_i * pinned, product * density)

    (_, product), born = lax.scan(step, (zeros, zeros + 1.0), inputs)
    return product, born


def _genz_channels(state, inputs, start: int):
    """Steps ``start ..`` of the gradient channels ``state`` (2 x (channels, N, B)); channel j
    runs from step j + 1 on and keeps its state before."""
    channel = jnp.arange(state[0].shape[0], dtype=jnp.int32)[:, None, None]

    def step(carry, inputs):
        i, *step_inputs = inputs
        _, *after = _genz_step(*carry, *step_inputs)
        return tuple(jnp.where(channel < i, a, c) for a, c in zip(after, carry, strict=True)), None

    steps = jnp.arange(start, start + inputs[0].shape[0], dtype=jnp.int32)
    return lax.scan(step, state, (steps, *inputs))[0]


def _genz_estimate(
    mu: jax.Array, uniforms: jax.Array, *, with_gradient: bool = True
) -> tuple[jax.Array, jax.Array | None]:
    """P and its gradient estimate for ascending ``mu`` (B, k) driven by ``uniforms`` (k, N, B).

    Without ``with_gradient`` only the estimator's own run is made (k times less work) and the
    gradient is None.
    """
    batch, dim = mu.shape
    if dim == 1:
        # One constraint: P = Phi(mu / sqrt(2)) exactly.
        x = mu / _SQRT2
        return special.ndtr(x[:, 0]), jnp.exp(-0.5 * x * x) * (_INV_SQRT_2PI / _SQRT2)
    inputs = (mu.T, uniforms, *_cholesky_constants(dim, mu.dtype))
    # Built from the inputs so that under shard_map the scan's initial carry varies over the mesh
    # axes its body's outputs vary over (those of mu and of the uniforms); XLA folds it to zeros.
    zeros = jnp.zeros_like(uniforms[0]) + jnp.zeros_like(inputs[0][0])
    product, born = _genz_base(inputs, zeros, with_gradient=with_gradient)
    probability = jnp.mean(product, axis=0)
    if not with_gradient:
        return probability, None
    # The channel born at step j runs steps j + 1 .. k - 1 (the last one none): block by block,
    # each block carrying only the channels born before its last step.
    size = max(-(-(dim - 1) // _BLOCKS), _MIN_BLOCK)
    state = tuple(b[:0] for b in born)
    for start in range(1, dim, size):
        stop = min(start + size, dim)
        state = tuple(
            jnp.concatenate([s, b[start - 1 : stop - 1]]) for s, b in zip(state, born, strict=True)
        )
        state = _genz_channels(state, tuple(x[start:stop] for x in inputs), start)
    products = jnp.concatenate([state[1], born[1][dim - 1 :]])
    return probability, jnp.mean(products, axis=1).T


@jax.custom_vjp
def _genz(mu: jax.Array, uniforms: jax.Array) -> jax.Array:
    return _genz_estimate(mu, uniforms, with_gradient=False)[0]


def _genz_fwd(mu, uniforms):
    probability, gradient = _genz_estimate(mu, uniforms)
    # The residual is the estimator's own gradient channels, not a derivative of the forward draw.
    return probability, (gradient, uniforms)


def _genz_bwd(residuals, cotangent):
    gradient, uniforms = residuals
    return gradient * cotangent[:, None], jnp.zeros_like(uniforms)


_genz.defvjp(_genz_fwd, _genz_bwd)


@functools.cache
def _hermite_rule(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    weights = weights * _INV_SQRT_2PI
    keep = weights > _QUADRATURE_MIN_WEIGHT
    return nodes[keep], np.log(weights[keep])


def _log_normal_pdf(x):
    return -0.5 * x * x - 0.5 * math.log(2.0 * math.pi)


def _quadrature_estimate(mu: jax.Array, entries: _classes.ClassAxis) -> tuple[jax.Array, jax.Array]:
    """P and dP/dmu from P = int phi(t) prod_k Phi(mu_k + t) dt, by Gauss-Hermite quadrature.

    ``entries``: the entries' axis, whole or split (then only the per-node sums of the log-CDFs
    cross devices, and each device gets its own entries' gradient).
    """
    nodes, log_weights = _hermite_rule(_QUADRATURE_NODES)
    x = mu[:, None, :] + jnp.asarray(nodes, mu.dtype)[:, None]
    log_cdf = special.log_ndtr(x)
    # log of w_q * prod_k Phi(mu_k + t_q), per row and node.
    log_terms = jnp.asarray(log_weights, mu.dtype) + entries.sum(log_cdf)
    probability = jnp.sum(jnp.exp(log_terms), axis=-1)
    # dP/dmu_j replaces Phi(mu_j + t) by phi(mu_j + t): multiply by the inverse Mills ratio.
    gradient = jnp.einsum("bq,bqk->bk", jnp.exp(log_terms), jnp.exp(_log_normal_pdf(x) - log_cdf))
    return probability, gradient


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _quadrature(mu: jax.Array, entries: _classes.ClassAxis) -> jax.Array:
    return _quadrature_estimate(mu, entries)[0]


def _quadrature_fwd(mu, entries):
    probability, gradient = _quadrature_estimate(mu, entries)
    return probability, gradient


def _quadrature_bwd(entries, gradient, cotangent):
    del entries
    return (gradient * cotangent[:, None],)


_quadrature.defvjp(_quadrature_fwd, _quadrature_bwd)


def _sort_keys(rows: jax.Array) -> jax.Array:
    """The rows with NaN as -inf: sorted (or selected) first, so that its row stays NaN."""
    return jnp.where(jnp.isnan(rows), -jnp.inf, rows)


def check_key(
    key: Any, *, dim: int, truncate_classes: int | None, method: str, uniforms: Any = None
) -> int:
    """Validates ``method`` and ``truncate_classes``; returns the number k of integrated entries.

    Raises the ValueError naming ``key`` when the estimate is random (Genz with k > 1) and neither
    a key nor uniforms are given, before any work is done.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    k = dim
    if truncate_classes is not None:
        k = min(_validation.check_integer("truncate_classes", truncate_classes, lower=1), dim)
    if key is None and uniforms is None and method == "genz" and k > 1:
        raise ValueError(
            "key is required: method='genz' with more than one entry per row is a Monte-Carlo "
            "estimate; pass key=jax.random.key(...) (or method='quadrature', or "
            "truncate_classes=1, which are deterministic); got key=None."
        )
    return k


@_autodiff.reverse_mode_only
def gaussian_orthant_probability(
    mu: Any,
    *,
    key: jax.Array | None = None,
    sample_size: int = 16,
    uniforms: Any = None,
    truncate_classes: int | None = None,
    method: str = "genz",
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Probability that :math:`\mu + w` is positive in every entry, for :math:`w \sim N(0, I + 11^T)`.

    .. math::

      P(\mu) = \Pr(\mu + w > 0) = \int \varphi(t) \prod_{k=1}^{D} \Phi(\mu_k + t)\, dt,
      \qquad w \sim \mathcal{N}(0, I_D + \mathbf{1}\mathbf{1}^\top).

    This is the probability that class :math:`y` wins when every logit gets independent standard
    Gaussian noise and :math:`\mu_k = z_y - z_k` (the EXACT loss). ``method="genz"`` is the
    reference's Monte-Carlo estimator: the entries are sorted ascending (stable), the variables are
    separated through the closed-form Cholesky factor of :math:`I + 11^T`, and each of the
    ``sample_size`` samples is a product of truncated-normal probabilities. Its gradient is a
    second, unbiased estimator computed in the same pass (one channel per entry, sharing the
    uniforms) and returned through a custom VJP: it is *not* the derivative of the forward
    estimate at fixed uniforms. Memory is :math:`O(N \cdot B \cdot D)`, time
    :math:`O(N \cdot B \cdot D^2)`; the value alone (outside ``jax.grad``) runs without the
    gradient channels, in time :math:`O(N \cdot B \cdot D)`. A single entry (``D = 1``, or
    ``truncate_classes=1``) is computed exactly, :math:`\Phi(\mu/\sqrt 2)`. As in the reference,
    factors below float precision make hopeless rows exactly 0 with a zero gradient.

    ``method="quadrature"`` evaluates the 1-D integral above with a Gauss-Hermite rule (52
    nodes) in log space: deterministic, :math:`O(B \cdot D)`, with the gradient of the same rule;
    tiny probabilities stay positive. In float64 it is accurate to ~1e-12, except for long rows
    of near ties (about 1e-8 for 99 entries within 0.1 of each other); float32 gives ~1e-6.

    Both methods take infinite entries as their limits: :math:`+\infty` is a constraint that
    always holds (it drops out), :math:`-\infty` one that never does (P = 0); the gradient there
    is 0. A NaN entry makes its row NaN, also under truncation. The gradient is a custom VJP in
    both methods: use reverse mode (``jax.grad``, ``jax.vjp``); forward mode raises a TypeError.

    **Rows split over devices** (``class_axis_name``, many entries): the quadrature adds up each
    shard's per-node sums of log-CDFs, and truncation selects from each shard's
    ``truncate_classes`` smallest entries, then runs on the selected ones on every device. Genz's
    estimator without truncation is sequential over all the sorted entries: it gathers the whole
    rows onto every device (use ``truncate_classes`` for many entries). The result is the
    single-device one for the same rows and uniforms.

    Args:
      mu: float array of shape ``(..., D)``; the constraints are along the last axis.
      key: PRNG key for the uniforms. Required by ``method="genz"`` when more than one entry per
        row is integrated and ``uniforms`` is not given; otherwise it may be None. Inside
        ``shard_map``/``pmap`` every shard draws the same uniforms from the same key: fold the
        axis index into it for independent shards (:func:`jaxloss.exact_loss` does with
        ``axis_name``), but not that of ``class_axis_name``: the shards of a row share its draw.
      sample_size: number of samples N of the Genz estimator.
      uniforms: optional uniforms in [0, 1) of shape ``(k, N, ...)`` (k = D, counting whole
        rows, or ``truncate_classes``) that replace the draw; row i drives the i-th smallest
        entry of ``mu`` (stable sort), so a run can be reproduced exactly across frameworks. The
        batch axes are last, so the uniforms shard with ``mu`` under ``shard_map``.
      truncate_classes: if given, only the ``truncate_classes`` smallest entries of each row are
        integrated (the others count as certainly positive): an upper bound on P at a fraction of
        the cost.
      method: ``"genz"`` or ``"quadrature"``.
      class_axis_name: inside ``jax.shard_map``, the mesh axis that the entries' axis is split
        over (each device holding a contiguous block of every row's entries), or None (the
        default) for whole rows. Under plain ``jax.jit`` leave it None: XLA splits the work
        itself.

    Returns:
      The probability, shape ``mu.shape[:-1]``, in ``mu``'s dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxloss.ops import gaussian_orthant_probability
      >>> mu = jnp.array([[0.0, 0.0], [2.0, -1.0]])
      >>> p = gaussian_orthant_probability(mu, method="quadrature")
      >>> print(f"{p[0]:.4f} {p[1]:.4f}")
      0.3333 0.2372
      >>> p = gaussian_orthant_probability(mu, key=jax.random.key(0), sample_size=4096)
      >>> print(f"{p[0]:.2f} {p[1]:.2f}")
      0.33 0.24

    References:
      Genz, "Numerical computation of multivariate normal probabilities", Journal of
      Computational and Graphical Statistics 1(2), 1992.

      Karpukhin, Dereka and Kolesnikov, "EXACT: How to Train Your Accuracy", Pattern Recognition
      Letters, 2024.
    """
    prepared = _validation.prepare(mu, min_classes=1, class_axis_name=class_axis_name)
    check_key(
        key,
        dim=prepared.num_classes,
        truncate_classes=truncate_classes,
        method=method,
        uniforms=uniforms,
    )
    if method == "genz" and uniforms is None:
        _validation.check_integer("sample_size", sample_size, lower=1)
    probability = orthant_core(
        prepared.logits,
        prepared.classes,
        key=key,
        sample_size=sample_size,
        uniforms=uniforms,
        truncate_classes=truncate_classes,
        method=method,
    )
    return probability.astype(prepared.out_dtype)


def orthant_core(
    mu: jax.Array,
    entries: _classes.ClassAxis,
    *,
    key: jax.Array | None,
    sample_size: int,
    uniforms: Any,
    truncate_classes: int | None,
    method: str,
) -> jax.Array:
    """:func:`gaussian_orthant_probability` without its checks, for callers that made them.

    EXACT's loss prepares its logits and checks ``key``, ``truncate_classes``, ``method`` and
    ``sample_size`` itself (:func:`check_key`), then calls this core, so that nothing is validated
    twice. ``mu`` holds the entries along its last axis in the compute dtype (as ``prepare``
    leaves them), laid out as ``entries`` says; the result is in ``mu``'s dtype. The shape of
    ``uniforms`` is checked here: it depends on the number of integrated entries.
    """
    batch_shape, dim = mu.shape[:-1], entries.global_size(mu.shape[-1])
    k = dim if truncate_classes is None else min(truncate_classes, dim)
    rows = jnp.clip(mu.reshape(-1, mu.shape[-1]), -_SATURATED, _SATURATED)
    if method == "quadrature" and k == dim:
        # A sum over the entries: split rows stay split.
        return _quadrature(rows, entries).reshape(batch_shape)
    if k < dim:
        # The k smallest, ascending, ties by index, as the stable sort's first k: a selection,
        # O(C) instead of the sort's O(C log C) (47 s -> 1 s at 1024 x 99,999, k = 128), and
        # on split rows only k candidates per shard cross devices. NaN is selected first (as
        # -inf); the clip made every -inf finite, so a -inf selected is a NaN: the row is NaN.
        rows = -entries.top_k(-_sort_keys(rows), k)[0]
        rows = jnp.where(rows == -jnp.inf, jnp.nan, rows)
    else:
        # Genz's estimator is sequential over all the sorted entries: it needs whole rows.
        rows = entries.whole(rows)
        order = _selection.argsort(lax.stop_gradient(_sort_keys(rows)))
        rows = jnp.take_along_axis(rows, order, axis=-1)
    if method == "quadrature":
        return _quadrature(rows, _classes.WHOLE).reshape(batch_shape)

    if uniforms is not None:
        uniforms = jnp.asarray(uniforms)
        if uniforms.ndim < 2 or uniforms.shape[0] != k or uniforms.shape[2:] != batch_shape:
            raise ValueError(
                f"uniforms must have shape (k, N, *batch) = ({k}, N, "
                f"{', '.join(map(str, batch_shape))}) for mu of shape {mu.shape}"
                f"{'' if truncate_classes is None else f' and truncate_classes={truncate_classes}'}, "
                f"got {uniforms.shape}."
            )
        uniforms = uniforms.astype(mu.dtype)
    elif k == 1:
        uniforms = jnp.zeros((1, 1, *batch_shape), mu.dtype)
    else:
        uniforms = jax.random.uniform(key, (k, sample_size, *batch_shape), mu.dtype)
    flat_uniforms = uniforms.reshape(k, uniforms.shape[1], -1)
    # Under shard_map the custom VJP returns mu's gradient with the estimate's type, which varies
    # over the mesh axes of the uniforms too: mu gets them here, so that this sum's transpose adds
    # the gradient up over those mu does not vary over. A no-op outside shard_map.
    rows = rows + jnp.zeros_like(flat_uniforms[0, 0])[:, None]
    return _genz(rows, flat_uniforms).reshape(batch_shape)
