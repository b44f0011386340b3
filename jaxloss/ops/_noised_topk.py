"""The k-th largest entry smoothed by Gaussian noise, with a pathwise (one-hot) gradient."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# A module import: _classes imports the ops package (its selection), which imports this module.
from jaxloss import _autodiff, _classes, _fusion, _selection, _validation
from jaxloss.ops import _special

__all__ = ["check_draws", "kth_core", "noised_topk"]


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer hash with full avalanche (C. Wellons' "lowbias32")."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _standard_normal(
    seed: jax.Array, rows: tuple[int, ...], positions: jax.Array, num_classes: int
) -> jax.Array:
    """float32 N(0, 1) draws: a counter hashed with two key-derived words, then an inverse CDF.

    ``jax.random.normal`` spends ~10 ns per draw on CPU in threefry's 20 rounds; the noise of this op
    is B*C*S draws per call, which made the RNG 8x the cost of the top-k itself. Two rounds of a
    32-bit avalanche hash cost ~0.2 ns per draw. The key still fully determines the noise (its two
    words ``seed`` come from threefry), and the tests check the draws' moments, normality and
    independence.

    The draws of rows of ``num_classes`` classes (shape ``rows``: the batch and the draws), at the
    (global) class ``positions`` (integers broadcastable to ``rows + (m,)``). An entry's counter is
    its flat index in the whole ``rows + (num_classes,)`` array, so the draws at some positions
    are those of the whole array there: a device holding a block of the classes, or the selection
    reading a few candidates again, gets the same numbers.
    """
    row = jnp.arange(int(np.prod(rows)), dtype=jnp.uint32).reshape(rows + (1,))
    return _normal_at(seed, row * jnp.uint32(num_classes) + positions.astype(jnp.uint32))


def _normal_at(seed: jax.Array, counter: jax.Array) -> jax.Array:
    """The draws of :func:`_standard_normal` at the given counters (uint32, any shape)."""
    bits = _mix32(_mix32(counter ^ seed[0]) + seed[1])
    # 23 random bits -> a uniform on the open interval (-1, 1), symmetric and exact in float32.
    uniform = ((bits >> 9).astype(jnp.float32) + 0.5) * 2.0**-22 - 1.0
    return np.sqrt(2.0).astype(np.float32) * _special.erf_inv(uniform)


@dataclasses.dataclass(frozen=True)
class _Draws:
    """The S noised copies y = x + epsilon * Z of each row of x (..., C), -inf where excluded.

    Z is ``noise`` (injected, shape (..., S, C)) or drawn from ``seed`` (the key's words);
    neither: epsilon = 0 and one copy.
    """

    x: jax.Array
    epsilon: jax.Array
    noise: jax.Array | None
    seed: jax.Array | None
    where: jax.Array | None
    classes: _classes.ClassAxis
    sample_size: int

    def all(self) -> jax.Array:
        """Every class, in order: shape (..., S, C)."""
        where = None if self.where is None else self.where[..., None, :]
        positions = jnp.arange(self.x.shape[-1])
        return self._scores(self.x[..., None, :], self.noise, where, positions)

    def across(self, then):
        """``then(scores)`` of every class laid out (S, C, ...): the draws of :meth:`all` with the
        batch last, so that a pass over the classes runs across rows in SIMD lanes.

        The draws and ``then`` run apart (:func:`_fusion.apart`): the inputs are written out
        once in the classes-first layout, which the draws read along the grain. Inline, the
        draws read x across it (0.7 instead of 0.4 ms at 256 x 100 x 10), and the slices of the
        passes over the classes took in the scores' cheap last steps, which cut the passes into
        58 loops (2.6 instead of 1.0 ms for the loss's value and gradient).
        """
        num_classes, batch = self.x.shape[-1], self.x.shape[:-1]
        lanes = (1,) * len(batch)

        def classes_then_batch(values):  # (..., C) -> (1, C, ...)
            # A transpose, which XLA's partitioner keeps split by class. (A gather written out in
            # this layout made the draws faster, 0.4 instead of 0.65 ms at 256 x 100 x 10, but
            # gathered class-sharded rows onto every device under jax.jit.)
            return None if values is None else jnp.moveaxis(values, -1, 0)[None]

        x, where = classes_then_batch(self.x), classes_then_batch(self.where)
        noise = None
        if self.noise is not None:  # (..., S, C) -> (S, C, ...)
            noise = jnp.moveaxis(self.noise, (-2, -1), (0, 1))

        def branch(x, where, noise, epsilon, seed):
            if seed is not None:
                # The counter of entry (s, c, b) is that of (b, s, c) in the layout of :meth:`all`.
                row = jnp.arange(int(np.prod(batch)), dtype=jnp.uint32).reshape((1, 1) + batch)
                draw = jnp.arange(self.sample_size, dtype=jnp.uint32).reshape((-1, 1) + lanes)
                position = jnp.arange(num_classes, dtype=jnp.uint32).reshape((1, -1) + lanes)
                counter = (row * jnp.uint32(self.sample_size) + draw) * jnp.uint32(num_classes)
                noise = _normal_at(seed, counter + position)
            if noise is not None:
                x = x + epsilon * noise.astype(x.dtype)
            return then(x if where is None else jnp.where(where, x, -jnp.inf))

        return _fusion.apart(branch, x, where, noise, self.epsilon, self.seed)

    def blocked(self, blocks: int, width: int) -> jax.Array:
        """Each of ``blocks`` blocks of classes padded to ``width`` with copies of its last."""
        local_size = self.x.shape[-1]
        padding = width - local_size // blocks

        def pad(values):
            if values is None:
                return None
            values = values.reshape(values.shape[:-1] + (blocks, -1))
            pairs = ((0, 0),) * (values.ndim - 1) + ((0, padding),)
            return jnp.pad(values, pairs, mode="edge").reshape(values.shape[:-2] + (-1,))

        where = None if self.where is None else self.where[..., None, :]
        positions = pad(jnp.arange(local_size))
        return self._scores(pad(self.x[..., None, :]), pad(self.noise), pad(where), positions)

    def _scores(self, x, noise, where, positions):
        # x, noise and where laid out as the local class positions of the result.
        if self.seed is not None:
            local_size = self.x.shape[-1]
            rows = self.x.shape[:-1] + (self.sample_size,)
            noise = _standard_normal(
                self.seed,
                rows,
                positions + self.classes.indices(local_size)[0],
                self.classes.global_size(local_size),
            )
        if noise is not None:
            x = x + self.epsilon * noise.astype(self.x.dtype)
        return x if where is None else jnp.where(where, x, -jnp.inf)


# The selection ranks groups of 8 neighbouring classes first. They tile each of 8 equal blocks of
# the classes (fewer blocks where the classes do not split in 8), the last group of a block padded:
# under jax.jit with the classes split evenly over 2, 4 or 8 devices no group straddles two, and
# XLA splits the selection without moving rows. 1000 classes: 8 blocks of 125 in 16 groups each,
# 128 groups, of which the best 6 (k = 6) hold 48 candidates.
_GROUP = 8
_BLOCKS = 8


def _grouping(local_size: int, k: int) -> tuple[int, int] | None:
    """(blocks, groups per block) of the selection by groups, or None where it does not pay: it
    needs the groups and the k best groups' k * 8 candidates to be much fewer than the classes."""
    blocks = math.gcd(local_size, _BLOCKS)
    per_block = -(-local_size // blocks // _GROUP)
    return (blocks, per_block) if blocks * per_block >= 4 * k else None


# Up to this rank and this many classes, whole rows select by passes of insertion rather than
# by lax.top_k, whose XLA:CPU kernel sorts row by row (1.7 ms for the top 6 of 2,560 rows of 100
# on 2 cores). The passes are unrolled over the classes: compiling them took 1.5 s and 0.5 GB at
# 128 classes, 3 s and 0.9 GB at 200, and ran out of memory at 1,000.
_PASSES = 8
_PASSES_CLASSES = 128


def _insert(slots: list[jax.Array], value: jax.Array, size: int) -> list[jax.Array]:
    """The descending ``slots`` (at most ``size``) with ``value`` inserted: maxima and minima."""
    out = []
    for slot in slots:
        out.append(jnp.maximum(value, slot))
        value = jnp.minimum(value, slot)
    return out + [value] if len(out) < size else out


def _kth_by_passes(keys: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k-th largest of the integer ``keys`` (S, C, ...) over the classes (axis 1) and its
    index, in ``lax.top_k``'s order (ties to the lowest index): shape (S, ...).

    Two passes over the classes, each elementwise maxima and minima of (S, ...) slices with the
    rows in SIMD lanes, which XLA fuses into one loop of one output: the k largest keys inserted
    class by class into k running slots, of which the last is the k-th key; then the k lowest
    classes holding that key, of which the k-th entry is the one past the entries above it.
    0.2 ms at 2,560 rows of 100 and k = 6, where k levels of two reductions over the classes
    took 0.9 ms (XLA:CPU fused no producer into a reduction). Carrying each slot's index along in
    selects broke the fusion (53 loops, 0.7 ms), as did any pass with several outputs (one loop
    each, each computing the whole pass again).
    """
    positions = range(keys.shape[1])
    best = []
    for position in positions:
        best = _insert(best, keys[:, position], k)
    key = best[-1]
    above = jnp.zeros(key.shape, jnp.int32)
    lowest = jnp.iinfo(jnp.int32).min
    holding = []  # the negated indices, so that the largest is the lowest index
    for position in positions:
        value = keys[:, position]
        above += (value > key).astype(jnp.int32)
        holding = _insert(holding, jnp.where(value == key, -position, lowest), k)
    # The k-th entry is the (k - above)-th holding the k-th key, in index order.
    index = -holding[0]
    for rank, negated in enumerate(holding[1:], 2):
        index = jnp.where(above == k - rank, -negated, index)
    return key, index


def _kth(k: int, draws: _Draws) -> tuple[jax.Array, jax.Array]:
    """Value and global index of the k-th largest score of each draw, ``lax.top_k``'s (ties to the
    lowest index), shape ``(..., S)``."""
    classes, local_size = draws.classes, draws.x.shape[-1]
    num_classes = classes.global_size(local_size)
    grouping = _grouping(local_size, k)
    # The k-th largest is the (n-k+1)-th smallest, the cheaper one to select past the middle.
    smallest = k > num_classes - k + 1
    rank = num_classes - k + 1 if smallest else k
    passes = rank <= _PASSES and local_size <= _PASSES_CLASSES
    if classes.name is None and passes and (grouping is None or smallest):

        def kth_key(scores):
            return _kth_by_passes(_selection.sortable(-scores if smallest else scores), rank)

        key, index = (jnp.moveaxis(a, 0, -1) for a in draws.across(kth_key))
        value = lax.bitcast_convert_type(_selection.sortable(key), draws.x.dtype)
        return -value if smallest else value, index
    if smallest:
        values, indices = classes.top_k(-draws.all(), rank)
        return -values[..., -1], indices[..., -1]
    if grouping is None:
        values, indices = classes.top_k(draws.all(), k)
        return values[..., -1], indices[..., -1]
    # The k entries of a draw's top k lie in at most k groups of neighbours, whose best entries are
    # among the k best groups' (in the order of (value, -index), which is lax.top_k's order; the
    # groups', by their best value then the lowest group, is the same since groups are contiguous).
    # So the top k of the k best groups' k * 8 entries is the draw's top k, ties included: a pass
    # over the scores for the groups' maxima, and two small top k, instead of one over the row.
    blocks, per_block = grouping
    width = local_size // blocks
    # Written once (the scores' rounding is XLA's choice per fusion: the maxima and the
    # candidates must read the same numbers), as integers in lax.top_k's order.
    keys = lax.optimization_barrier(_selection.sortable(draws.blocked(blocks, per_block * _GROUP)))
    best = jnp.max(keys.reshape(keys.shape[:-1] + (blocks * per_block, _GROUP)), axis=-1)
    dtype = draws.x.dtype
    _, groups = classes.top_k(lax.bitcast_convert_type(_selection.sortable(best), dtype), k)
    # In index order, so that the candidates' own top k breaks ties as the whole row's does.
    groups = jnp.sort(groups, axis=-1)
    shard, group = jnp.divmod(groups, blocks * per_block)
    entries = (group[..., None] * _GROUP + jnp.arange(_GROUP)).reshape(groups.shape[:-1] + (-1,))
    block, within = jnp.divmod(entries, per_block * _GROUP)
    candidates = shard.repeat(_GROUP, axis=-1) * local_size + block * width + within
    # A candidate's key comes from the device that holds its class (its bits: exact, even -0.0);
    # a block's padding (copies of its last class) ranks below every score (-NaN with every bit
    # set ties it: its row is NaN).
    held = shard.repeat(_GROUP, axis=-1) * local_size == classes.indices(local_size)[0]
    bits = jnp.take_along_axis(keys, entries, axis=-1)
    bits = classes.sum(jnp.where(held, bits, 0)[..., None]).astype(bits.dtype)
    bits = jnp.where(within < width, bits, jnp.iinfo(bits.dtype).min)
    values, at = _selection.top_k(lax.bitcast_convert_type(_selection.sortable(bits), dtype), k)
    return values[..., -1], jnp.take_along_axis(candidates, at[..., -1:], axis=-1)[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _kth_mean(k, classes, sample_size, x, epsilon, noise, seed, where):
    """The mean over the draws of the k-th largest noised score, shape (...), and of the noise
    there.

    The mean noise of the entries that hold the k-th largest (0 where that entry is excluded or
    the draw is NaN) is epsilon's gradient, which the caller applies: as an argument here, epsilon
    takes no gradient, so that under ``shard_map`` the chain rule sums it over the devices as it
    does for any replicated input.
    """
    return _kth_mean_fwd(k, classes, sample_size, x, epsilon, noise, seed, where)[0]


def _kth_mean_fwd(k, classes, sample_size, x, epsilon, noise, seed, where):
    local_size = x.shape[-1]
    values, indices = _kth(k, _Draws(x, epsilon, noise, seed, where, classes, sample_size))
    if seed is not None:
        rows = x.shape[:-1] + (sample_size,)
        num_classes = classes.global_size(local_size)
        z = _standard_normal(seed, rows, indices[..., None], num_classes)[..., 0]
    elif noise is not None:
        z = classes.label_value(noise, indices)
    else:
        z = jnp.zeros_like(values)
    kept = ~jnp.isnan(values)
    if where is not None:
        kept &= classes.label_value(where[..., None, :], indices)
    z = jnp.where(kept, z.astype(x.dtype), 0.0)
    means = jnp.mean(values, axis=-1), jnp.mean(z, axis=-1)
    return means, (x, epsilon, noise, kept, indices)


def _kth_mean_bwd(k, classes, sample_size, residuals, cotangents):
    # The k-th largest of a draw moves one for one with the entry that holds it: the gradient of
    # the mean is each entry's count of draws times g / S; injected noise gets g / S times epsilon
    # at each draw's entry.
    del k
    x, epsilon, noise, kept, indices = residuals
    local_size = x.shape[-1]
    g = cotangents[0]
    # Counted in integers and scaled once: float32 shares of 1/S added S times drift (20,000
    # draws on one entry summed to 1.0001096, a bias that no number of keys averages out).
    # A NaN draw (its value is overridden by NaN anyway) and an excluded entry (the k-th of a
    # row with fewer than k entries left) count nothing. Added at each draw's k-th entry, if
    # this device holds it (others are dropped): (..., S) updates, not a (..., S, C) one-hot.
    local = indices - classes.indices(local_size)[0]
    local = jnp.where(kept & (local >= 0) & (local < local_size), local, local_size)
    # Zeros read from x tie the counts to x's layout: with the classes split over devices
    # under jax.jit (many classes), each device counts its own classes. Made in floats (XLA
    # folds an integer times 0 to a constant, which would lose the layout).
    zeros = ((x == x).astype(x.dtype) * 0).astype(jnp.int32)
    rows = int(np.prod(x.shape[:-1]))
    counts = jax.vmap(lambda counts, at: counts.at[at].add(1, mode="drop"))(
        zeros.reshape(rows, -1), local.reshape(rows, -1)
    )
    # A divisor of the counts' shape behind a barrier: XLA turns a division by a scalar into a
    # product with its rounded reciprocal, and S times the rounded 1/S is not always 1. Made
    # from the zeros, it is laid out (and split by class) as x.
    divisor = lax.optimization_barrier(zeros.astype(x.dtype) + sample_size)
    dx = g[..., None] * counts.reshape(x.shape).astype(x.dtype) / divisor
    d_noise = None
    if noise is not None:
        share = jnp.where(kept, g[..., None] / sample_size, jnp.zeros((), x.dtype))
        one_hot = classes.is_label(indices, local_size)
        d_noise = jnp.where(one_hot, (epsilon * share)[..., None], jnp.zeros((), x.dtype))
        d_noise = d_noise.astype(noise.dtype)
    return dx, None, d_noise, None, None


_kth_mean.defvjp(_kth_mean_fwd, _kth_mean_bwd)
# One dispatch for the op's many small steps when it is called outside jax.jit.
_kth_mean = jax.jit(_kth_mean, static_argnums=(0, 1, 2))


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
    class_axis_name: str | None = None,
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

    Inside ``jax.shard_map`` with ``class_axis_name``, injected ``noise`` is split like ``x``
    (its class axis too), and each device draws from ``key`` the noise of its own classes: the
    single-device draws, as long as only the classes are split. Rows split over another mesh axis
    (data parallelism) are numbered from 0 on each device, so every row shard would draw the same
    noise: fold that axis's index into the key, ``jax.random.fold_in(key,
    jax.lax.axis_index("data"))``, as for any stochastic loss under data parallelism.

    Args:
      x: float array of any shape.
      k: which largest entry, from 1 (the max) to the number of entries along ``axis`` (of whole
        rows).
      epsilon: noise scale, ``>= 0`` (a scalar).
      sample_size: number of noise draws ``S >= 1``.
      key: a PRNG key; exactly one of ``key`` and ``noise`` unless ``epsilon == 0``.
      noise: standard-normal draws of shape ``x.shape + (sample_size,)`` (sample axis last, as in
        the reference implementation) used instead of drawing from ``key``.
      axis: the axis along which the k-th largest is taken.
      where: optional boolean mask broadcastable to ``x``; False entries are excluded (they never
        rank), as are ``-inf`` entries. With fewer than ``k`` entries left the result is
        ``-inf``.
      class_axis_name: inside ``jax.shard_map``, the mesh axis that the class axis is split over
        (each device holding a contiguous block of every row's classes, and of any per-class
        vector), or None (the default) for whole rows. Under plain ``jax.jit`` leave it None:
        XLA splits class-sharded logits itself.

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
    prepared = _validation.prepare(
        x, axis=axis, where=where, tuple_axis=False, class_axis_name=class_axis_name
    )
    k = _validation.check_integer("k", k, lower=1, upper=prepared.num_classes)
    draws = check_draws(
        prepared.logits,
        prepared.classes,
        epsilon=epsilon,
        sample_size=sample_size,
        key=key,
        noise=noise,
        axis=axis,
    )
    out = kth_core(prepared.logits, prepared.where, prepared.classes, k, epsilon, *draws)
    return out.astype(prepared.out_dtype)


def check_draws(
    values: jax.Array,
    classes: _classes.ClassAxis,
    *,
    epsilon: Any,
    sample_size: Any,
    key: jax.Array | None,
    noise: Any,
    axis: int,
) -> tuple[int, jax.Array | None, jax.Array | None]:
    """Checks :func:`noised_topk`'s arguments besides ``x`` and ``k``; returns the draws.

    ``values`` are the prepared entries (classes last) and ``axis`` the class axis of the caller's
    layout, which injected ``noise`` keeps. The op and the noised top-k losses (after their own
    ``prepare`` and check of k) call this, then :func:`kth_core`.

    Returns:
      ``(sample_size, noise_draws, seed)``: the number of draws (1 when ``epsilon == 0``, which
      draws nothing), the injected noise as ``(..., S, C)`` in ``values``' dtype or None, and the
      generator's seed drawn from ``key`` or None.
    """
    sample_size = _validation.check_integer("sample_size", sample_size, lower=1)
    if np.ndim(epsilon) != 0:
        raise ValueError(f"epsilon must be a scalar, got shape {np.shape(epsilon)}.")
    _validation.check_in_range("epsilon", epsilon, lower=0, finite=True)
    if key is not None and noise is not None:
        raise ValueError("Pass either key or noise, not both.")
    if not isinstance(epsilon, jax.core.Tracer) and float(epsilon) == 0.0:
        return 1, None, None
    if noise is not None:
        ndim = values.ndim
        # The caller's layout: the classes at `axis`.
        x_shape = list(values.shape[:-1])
        x_shape.insert(axis % ndim, values.shape[-1])
        expected = (*x_shape, sample_size)
        if tuple(np.shape(noise)) != expected:
            raise ValueError(
                f"noise must have shape x.shape + (sample_size,) = {expected}, got "
                f"{tuple(np.shape(noise))}."
            )
        # (..., C at `axis`, ..., S) -> (..., S, C): the layout the selection runs on.
        noise_draws = jnp.moveaxis(jnp.asarray(noise), (axis % ndim, ndim), (ndim, ndim - 1))
        return sample_size, noise_draws.astype(values.dtype), None
    if key is not None:
        size = values.size // values.shape[-1] * sample_size * classes.global_size(values.shape[-1])
        if size >= 2**32:
            raise ValueError(
                f"noised_topk draws {size} noise values (x.size * sample_size); at most "
                "2**32 - 1 are supported per call. Split the batch."
            )
        return sample_size, None, jax.random.bits(key, (2,), jnp.uint32)
    raise ValueError("noised_topk with epsilon > 0 needs a PRNG key or injected noise.")


def kth_core(
    values: jax.Array,
    where: jax.Array | None,
    classes: _classes.ClassAxis,
    k: int,
    epsilon: Any,
    sample_size: int,
    noise_draws: jax.Array | None,
    seed: jax.Array | None,
) -> jax.Array:
    """:func:`noised_topk` without its checks, for callers that prepared their inputs.

    ``values`` and ``where`` as ``prepare`` leaves them (classes last, compute dtype), ``k``
    checked by the caller, the rest from :func:`check_draws`. The result is in ``values``' dtype.
    """
    nan = jnp.isnan(values)
    if where is not None:
        nan &= where
    out, noise_at_kth = _kth_mean(
        k,
        classes,
        sample_size,
        values,
        lax.stop_gradient(jnp.asarray(epsilon, values.dtype)),
        noise_draws,
        seed,
        where,
    )
    if isinstance(epsilon, jax.core.Tracer):
        # + 0 to the value; the gradient to epsilon is the k-th entries' noise.
        epsilon = jnp.asarray(epsilon, values.dtype)
        out = out + (epsilon - lax.stop_gradient(epsilon)) * lax.stop_gradient(noise_at_kth)
    # lax.top_k ranks NaN above every number: without this a NaN score would pass as a finite
    # threshold, and a training loop's NaN check would never fire. (B, C), not (B, C, S): cheap.
    return jnp.where(classes.sum(nan.astype(jnp.int32)) > 0, jnp.nan, out)
