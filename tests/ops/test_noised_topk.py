"""Tests of jaxloss.ops.noised_topk: exact expectations, injected noise, ε = 0, axes, gradients."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jaxloss.ops import _noised_topk, noised_topk
from jaxloss.ops._noised_topk import _standard_normal
from tests import testing


def exact_smoothed_kth(s, k: int, epsilon: float):
    """E[k-th largest of s + εZ] and P(entry i is the k-th largest), by float64 quadrature.

    Entry i is k-th at level t when Y_i = t and exactly k - 1 of the others exceed t; that count is
    Poisson-binomial, computed by a DP over the other entries (spec §1.1). Simpson's rule on
    t ∈ top_k(s) ± 9ε with 2001 points (converged to < 1e-9 per the spec).
    """
    s = np.asarray(s, np.float64)
    center = np.sort(s)[::-1][k - 1]
    t = np.linspace(center - 9 * epsilon, center + 9 * epsilon, 2001)
    exceed = stats.norm.sf((t[None, :] - s[:, None]) / epsilon)  # P(Y_j > t), shape (C, T)
    density = stats.norm.pdf((t[None, :] - s[:, None]) / epsilon) / epsilon
    probs, value = [], 0.0
    for i in range(len(s)):
        counts = np.zeros((k, t.size))  # counts[j] = P(exactly j of the others exceed t), j < k
        counts[0] = 1.0
        for j in np.delete(np.arange(len(s)), i):
            shifted = np.vstack([np.zeros((1, t.size)), counts[:-1]])
            counts = counts * (1 - exceed[j]) + shifted * exceed[j]
        weight = density[i] * counts[k - 1]
        probs.append(integrate.simpson(weight, x=t))
        value += integrate.simpson(t * weight, x=t)
    return value, np.array(probs)


def numpy_noised_topk(x, noise, k, epsilon, axis, dtype=np.float64):
    """Brute force with a full sort: the mean k-th largest and d(sum of it)/dx (counts / S)."""
    axis = axis % np.ndim(x)
    x = np.moveaxis(np.asarray(x, dtype), axis, -1)
    noise = np.moveaxis(np.asarray(noise, dtype), axis, -2)  # (..., C, S)
    y = x[..., None] + dtype(epsilon) * noise
    order = np.argsort(-y, axis=-2, kind="stable")
    picked = np.take_along_axis(order, np.full((*y.shape[:-2], 1, y.shape[-1]), k - 1), -2)
    value = np.take_along_axis(y, picked, -2)[..., 0, :].mean(-1)
    grad = (picked == np.arange(x.shape[-1])[:, None]).mean(-1)
    return value, np.moveaxis(grad, -1, axis)


_value_and_grad = jax.jit(
    jax.value_and_grad(
        lambda x, noise, k, epsilon, axis: jnp.sum(
            noised_topk(
                x, k=k, epsilon=epsilon, sample_size=noise.shape[-1], noise=noise, axis=axis
            )
        )
    ),
    static_argnames=("k", "axis"),
)


@jax.jit
def _mc_estimates(keys, x, epsilon):
    """Value and gradient of the k=2 smoothing of one row, one estimate per key (S = 2000)."""

    def one(key):
        return jax.value_and_grad(
            lambda x: noised_topk(x, k=2, epsilon=epsilon, sample_size=2000, key=key)
        )(x)

    return jax.vmap(one)(keys)


def test_oracle_matches_the_spec_reference():
    # Exact values recorded in the spec (independent integration, checked against 2e6 draws).
    v0, p0 = exact_smoothed_kth([-1.5, 2.0, 0.7, 3.8], 3, 1.0)
    v1, p1 = exact_smoothed_kth([-1.1, -5.4, 0.1, 2.3], 3, 1.0)
    np.testing.assert_allclose([v0, v1], [0.597243, -1.256768], atol=2e-6)
    np.testing.assert_allclose(p0, [0.0608, 0.1740, 0.7581, 0.0071], atol=1e-4)
    np.testing.assert_allclose(p1, [0.7985, 0.0012, 0.1969, 0.0034], atol=1e-4)
    np.testing.assert_allclose(p0.sum(), 1.0, atol=1e-9)


@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_monte_carlo_matches_the_exact_expectation(epsilon):
    x = np.array([0.3, -0.2, 1.1, 0.9, -1.5], np.float32)
    values, grads = _mc_estimates(jax.random.split(jax.random.key(3), 40), x, epsilon)
    exact_value, exact_p = exact_smoothed_kth(x, 2, epsilon)
    n = values.shape[0]
    value_se = np.std(values) / np.sqrt(n)
    assert abs(np.mean(values) - exact_value) < 4 * value_se + 1e-5
    # Var(ĝ_j) = p_j (1 - p_j) / S per key: the standard error of the mean of n keys.
    grad_se = np.sqrt(exact_p * (1 - exact_p) / (2000 * n))
    np.testing.assert_array_less(np.abs(np.mean(grads, 0) - exact_p), 4 * grad_se + 1e-5)
    np.testing.assert_allclose(np.asarray(grads).sum(-1), 1.0, rtol=1e-5)


def test_equal_entries_give_uniform_gradient_and_order_statistic():
    # All-equal s: φ = s + ε E[2nd largest of 5 N(0,1)] and p_j = 1/C (spec §1.1 properties).
    x = np.full(5, 0.7, np.float32)
    values, grads = _mc_estimates(jax.random.split(jax.random.key(4), 40), x, 1.0)
    order_stat = integrate.quad(
        lambda z: z * 20 * stats.norm.pdf(z) * stats.norm.sf(z) * stats.norm.cdf(z) ** 3,
        -np.inf,
        np.inf,
    )[0]
    se = np.std(values) / np.sqrt(values.shape[0])
    assert abs(np.mean(values) - (0.7 + order_stat)) < 4 * se
    np.testing.assert_allclose(np.mean(grads, 0), 0.2, atol=4 * np.sqrt(0.16 / 80_000))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_injected_noise_matches_numpy(k):
    x = testing.random_logits(0, (4, 6), dtype=np.float32)
    noise = np.random.default_rng(1).standard_normal((4, 6, 7)).astype(np.float32)
    value, grad = _value_and_grad(x, noise, k, 0.8, -1)
    want_value, want_grad = numpy_noised_topk(x, noise, k, 0.8, -1)
    np.testing.assert_allclose(
        noised_topk(x, k=k, epsilon=0.8, sample_size=7, noise=noise), want_value, rtol=1e-6
    )
    np.testing.assert_allclose(value, want_value.sum(), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_every_axis_of_a_3d_input(axis):
    x = testing.random_logits(2, (3, 4, 5), dtype=np.float32)
    noise = np.random.default_rng(3).standard_normal((3, 4, 5, 6)).astype(np.float32)
    out = noised_topk(x, k=2, epsilon=0.5, sample_size=6, noise=noise, axis=axis)
    want_value, want_grad = numpy_noised_topk(x, noise, 2, 0.5, axis)
    chex.assert_shape(out, np.delete(np.array(x.shape), axis % 3).tolist())
    np.testing.assert_allclose(out, want_value, rtol=1e-6)
    np.testing.assert_allclose(_value_and_grad(x, noise, 2, 0.5, axis)[1], want_grad, rtol=1e-6)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_epsilon_zero_is_the_exact_kth_largest(k):
    x = testing.random_logits(5, (3, 7), dtype=np.float32)
    value, grad = jax.value_and_grad(lambda x: noised_topk(x, k=k, epsilon=0.0).sum())(x)
    order = np.argsort(-x, axis=-1)
    np.testing.assert_array_equal(noised_topk(x, k=k, epsilon=0.0), -np.sort(-x, axis=-1)[:, k - 1])
    np.testing.assert_allclose(value, np.sort(x, -1)[:, -k].sum(), rtol=1e-6)
    np.testing.assert_array_equal(grad, np.eye(7)[order[:, k - 1]])


def test_key_draws_are_deterministic_and_fresh_keys_differ():
    x = testing.random_logits(6, (8, 10), dtype=np.float32)
    a = noised_topk(x, k=2, key=jax.random.key(0))
    np.testing.assert_array_equal(a, noised_topk(x, k=2, key=jax.random.key(0)))
    assert not np.allclose(a, noised_topk(x, k=2, key=jax.random.key(1)))


def test_standard_normal_draws_are_normal_and_uncorrelated():
    def draws(key):
        seed = jax.random.bits(key, (2,), jnp.uint32)
        return _standard_normal(seed, (64, 8), jnp.arange(400), 400)

    z = np.asarray(draws(jax.random.key(0)), np.float64)
    flat = z.ravel()
    assert abs(flat.mean()) < 4 / np.sqrt(flat.size)
    assert abs(flat.var() - 1) < 4 * np.sqrt(2 / flat.size)
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    # Neighbours along every axis (consecutive counters) and across keys are uncorrelated.
    bound = 4 / np.sqrt(flat.size / 2)
    for axis in range(3):
        a, b = np.swapaxes(z, axis, -1)[..., :-1], np.swapaxes(z, axis, -1)[..., 1:]
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < bound
    other = np.asarray(draws(jax.random.key(1))).ravel()
    assert abs(np.corrcoef(flat, other)[0, 1]) < bound
    chex.assert_tree_all_finite(z)


def test_shift_equivariance_and_epsilon_scaling():
    x = testing.random_logits(7, (5, 6), dtype=np.float64)
    noise = np.random.default_rng(8).standard_normal((5, 6, 9))
    with jax.enable_x64(True):
        base = noised_topk(x, k=3, epsilon=0.7, sample_size=9, noise=noise)
        shifted = noised_topk(x + 2.5, k=3, epsilon=0.7, sample_size=9, noise=noise)
        np.testing.assert_allclose(shifted, base + 2.5, rtol=1e-12)
        unit = noised_topk(x / 0.7, k=3, epsilon=1.0, sample_size=9, noise=noise)
        np.testing.assert_allclose(base, 0.7 * unit, rtol=1e-12)
        # Non-decreasing in every entry: the gradient is a probability vector per row.
        _, grad = _value_and_grad(x, noise, 3, 0.7, -1)
        assert np.all(np.asarray(grad) >= 0)
        np.testing.assert_allclose(np.sum(grad, -1), 1.0)


def test_gradients_of_x_epsilon_and_noise_match_finite_differences():
    x = testing.random_logits(9, (3, 5))
    noise = np.random.default_rng(10).standard_normal((3, 5, 4))

    def fn(x, epsilon, noise):
        return noised_topk(x, k=2, epsilon=epsilon, sample_size=4, noise=noise)

    testing.check_grads_f64(fn, (x, np.float64(0.9), noise))


def test_per_example_gradients():
    x = testing.random_logits(11, (6, 5), dtype=np.float32)
    noise = np.random.default_rng(12).standard_normal((6, 5, 8)).astype(np.float32)
    per_example = jax.jit(
        jax.vmap(jax.grad(lambda x, z: noised_topk(x, k=2, epsilon=1.0, sample_size=8, noise=z)))
    )(x, noise)
    np.testing.assert_allclose(per_example, _value_and_grad(x, noise, 2, 1.0, -1)[1], rtol=1e-6)
    keys = jax.random.split(jax.random.key(0), 6)
    grads = jax.jit(jax.vmap(jax.grad(lambda x, key: noised_topk(x, k=2, sample_size=8, key=key))))(
        x, keys
    )
    np.testing.assert_allclose(np.sum(grads, -1), 1.0, rtol=1e-6)


def test_gradient_counts_draws_exactly_at_many_samples():
    # 20,000 draws: each entry's gradient is its count of draws / S, rounded once (float32 shares
    # of 1/S added 20,000 times gave 1.0001096 for a row whose draws all pick one entry).
    samples = 20_000
    x = np.array([[50.0, 0.0, -1.0, 2.0], [0.3, 0.0, 0.1, -0.2]], np.float32)
    noise = np.random.default_rng(24).standard_normal((2, 4, samples)).astype(np.float32)
    _, want = numpy_noised_topk(x, noise, 1, 1.0, -1)
    _, grad = _value_and_grad(x, noise, 1, 1.0, -1)
    np.testing.assert_array_equal(grad, want.astype(np.float32))
    assert np.asarray(grad)[0, 0] == 1.0
    key_grad = jax.grad(lambda x: noised_topk(x, k=1, sample_size=samples, key=jax.random.key(1)))(
        x[0]
    )
    np.testing.assert_array_equal(key_grad, [1.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("k", [1, 8])
def test_selection_by_groups_matches_numpy(k):
    # 264 classes: 8 blocks of 33, each tiled by 5 groups of 8 (the last padded), of which the k
    # best hold the top k. Ties (equal scores, -inf) go to the lowest index, as in a stable sort.
    assert _noised_topk._grouping(264, k) is not None
    x = testing.random_logits(20, (4, 264), dtype=np.float32)
    x[0, ::3] = x[0, 0]
    x[1, 5] = np.inf
    x[2, :200] = -np.inf
    x[3, :260] = -np.inf  # fewer than k finite entries for k = 8: the k-th is the first -inf
    noise = np.random.default_rng(21).standard_normal((4, 264, 5)).astype(np.float32)
    for epsilon, draws in ((0.0, np.zeros((4, 264, 1), np.float32)), (0.6, noise)):
        # float32 sums, as the op forms them (without a fused multiply-add).
        want_value, want_grad = numpy_noised_topk(x, draws, k, epsilon, -1, np.float32)
        value, grad = _value_and_grad(x, draws, k, epsilon, -1)
        np.testing.assert_allclose(
            noised_topk(x, k=k, epsilon=epsilon, sample_size=draws.shape[-1], noise=draws),
            want_value,
            rtol=1e-6,
        )
        np.testing.assert_allclose(value, want_value.sum(), rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6)


def test_selection_by_groups_is_the_plain_selection(monkeypatch):
    # The key's draws, a mask and ties: the same k-th entries as the selection over whole rows
    # (its group maxima and its candidates' scores, made in different passes, round alike).
    x = testing.random_logits(22, (5, 264), dtype=np.float32)
    x[0, ::2] = x[0, 1]
    x[1, :100] = -np.inf
    where = np.random.default_rng(23).random((5, 264)) > 0.3
    where[2, 4:] = False

    def run():
        def total(x, epsilon):
            out = noised_topk(
                x, k=3, epsilon=epsilon, sample_size=4, key=jax.random.key(2), where=where
            )
            return jnp.sum(jnp.where(jnp.isfinite(out), out, 0.0)), out

        return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(x, 0.7)

    grouped = run()
    monkeypatch.setattr(_noised_topk, "_grouping", lambda local_size, k: None)
    monkeypatch.setattr(_noised_topk, "_PASSES", 0)
    jax.clear_caches()  # the op's jitted core would reuse its trace
    chex.assert_trees_all_equal(grouped, run())


@pytest.mark.parametrize(
    ("classes", "k"),
    [(10, 3), (10, 8), (100, 6), (101, 2)],  # the k-th largest, or smallest, side
)
def test_selection_by_passes_is_lax_top_k(classes, k, monkeypatch):
    # The passes over the classes (whole rows, small k) pick the k-th entry that lax.top_k picks:
    # ties to the lowest index, -inf, NaN and masked entries, key draws and injected noise.
    x = testing.random_logits(25, (6, classes), dtype=np.float32)
    x[0, ::2] = x[0, 1]
    x[1, : classes - 2] = -np.inf
    x[2, 3] = np.nan
    x[3, 1::3] = 0.0
    x[3, ::3] = -0.0
    where = np.random.default_rng(26).random((6, classes)) > 0.2
    noise = np.random.default_rng(27).standard_normal((6, classes, 3)).astype(np.float32)
    noise[0] = 0.0  # row 0 keeps its ties

    def run():
        def total(x, epsilon, draws):
            out = noised_topk(x, k=k, epsilon=epsilon, sample_size=3, noise=draws, where=where)
            keyed = noised_topk(x, k=k, epsilon=epsilon, sample_size=4, key=jax.random.key(3))
            both = jnp.stack([out, keyed])
            return jnp.sum(jnp.where(jnp.isfinite(both), both, 0.0)), both

        step = jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)
        return jax.jit(step)(x, 0.7, noise)

    jax.clear_caches()  # traces made under another setting would be reused
    passes = run()
    monkeypatch.setattr(_noised_topk, "_PASSES", 0)
    jax.clear_caches()
    chex.assert_trees_all_equal(passes, run())


@pytest.mark.parametrize(("classes", "k"), [(1, 1), (7, 7), (10, 6), (100, 8)])
def test_passes_over_keys_are_lax_top_k_with_ties_and_extreme_keys(classes, k):
    # The two passes on integer keys (S, C, rows): the k-th key and the index lax.top_k gives it,
    # among many ties (a key held k - 1 times above the k-th, or more than k times), and at the
    # int32 extremes, which the passes' running slots and their mask of other keys must not take
    # for an entry.
    keys = np.random.default_rng(30).integers(-2, 2, (3, classes, 6)).astype(np.int32)
    lowest, highest = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    keys[1, :, 0] = lowest
    keys[1, :, 1] = highest
    keys[1, ::2, 2] = lowest
    keys[1, 1::3, 3] = highest
    keys[2, :, 4] = 0
    key, index = jax.jit(_noised_topk._kth_by_passes, static_argnums=1)(keys, k)
    values, indices = jax.lax.top_k(np.moveaxis(keys, 1, -1), k)
    np.testing.assert_array_equal(key, values[..., -1])
    np.testing.assert_array_equal(index, indices[..., -1])


def test_many_classes_past_the_middle_select_without_passes():
    # 300 classes, k = 297: the 4th smallest, on more classes than the passes unroll over.
    assert 300 > _noised_topk._PASSES_CLASSES
    x = testing.random_logits(31, (3, 300), dtype=np.float32)
    x[0, ::2] = x[0, 1]
    noise = np.random.default_rng(32).standard_normal((3, 300, 2)).astype(np.float32)
    want_value, want_grad = numpy_noised_topk(x, noise, 297, 0.5, -1, np.float32)
    value, grad = _value_and_grad(x, noise, 297, 0.5, -1)
    np.testing.assert_allclose(value, want_value.sum(), rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6)


def test_passes_run_in_one_branch_also_under_vmap():
    # The draws and passes run in a conditional's branch, which keeps XLA:CPU from fusing across
    # them; under jax.vmap (a population of losses) its predicate must stay unbatched, or the
    # conditional becomes a select of both branches, computed inline (80 times slower).
    x = testing.random_logits(33, (2, 4, 10), dtype=np.float32)

    def total(x, epsilon):
        return jnp.sum(noised_topk(x, k=3, epsilon=epsilon, sample_size=4, key=jax.random.key(4)))

    step = jax.vmap(jax.value_and_grad(total))
    hlo = jax.jit(step).lower(x, jnp.array([0.5, 1.0])).compile().as_text()
    assert " conditional(" in hlo


def test_where_excludes_entries():
    x = testing.random_logits(13, (4, 6), dtype=np.float32)
    where = np.array([True, False, True, True, False, True])
    noise = np.random.default_rng(14).standard_normal((4, 6, 3)).astype(np.float32)
    got = noised_topk(x, k=2, epsilon=0.5, sample_size=3, noise=noise, where=where)
    want, _ = numpy_noised_topk(x[:, where], noise[:, where], 2, 0.5, -1)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    grad = jax.grad(lambda x: noised_topk(x, k=2, key=jax.random.key(0), where=where).sum())(x)
    np.testing.assert_array_equal(np.asarray(grad)[:, ~where], 0.0)


def test_dtypes_and_extreme_inputs():
    x = testing.random_logits(15, (3, 8), dtype=np.float32)
    out = noised_topk(jnp.asarray(x, jnp.bfloat16), k=2, key=jax.random.key(0))
    assert out.dtype == jnp.bfloat16
    with jax.enable_x64(True):
        assert noised_topk(x.astype(np.float64), k=2, key=jax.random.key(0)).dtype == jnp.float64
    big = 1e4 * np.sign(x)
    smoothed = jax.jit(
        lambda x, epsilon: noised_topk(x, k=3, epsilon=epsilon, key=jax.random.key(0))
    )
    for epsilon in (0.0, 1e-3, 1.0):
        testing.assert_finite_value_and_grad(smoothed, big, epsilon)
    hard = jax.jit(lambda x: noised_topk(x, k=8, epsilon=0.0))
    np.testing.assert_array_equal(hard(big), np.min(big, -1))


def test_bad_inputs_raise():
    x = np.zeros((2, 4), np.float32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="k must be in"):
        noised_topk(x, k=5, key=key)
    with pytest.raises(ValueError, match="k must be in"):
        noised_topk(x, k=0, key=key)
    with pytest.raises(TypeError, match="k must be a Python int"):
        noised_topk(x, k=2.0, key=key)
    with pytest.raises(ValueError, match="epsilon must be in"):
        noised_topk(x, k=2, epsilon=-0.1, key=key)
    with pytest.raises(ValueError, match="sample_size must be in"):
        noised_topk(x, k=2, sample_size=0, key=key)
    with pytest.raises(ValueError, match="either key or noise"):
        noised_topk(x, k=2, key=key, noise=np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="needs a PRNG key or injected noise"):
        noised_topk(x, k=2)
    with pytest.raises(ValueError, match="noise must have shape"):
        noised_topk(x, k=2, noise=np.zeros((2, 4, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        noised_topk(np.zeros((2, 4), np.int32), k=2, key=key)
    with pytest.raises(ValueError, match="not an axis of an enclosing shard_map"):
        noised_topk(x, k=2, key=key, class_axis_name="model")


def test_nonfinite_entries():
    x = testing.random_logits(16, (4, 6), dtype=np.float32)
    noise = np.random.default_rng(17).standard_normal((4, 6, 3)).astype(np.float32)
    poisoned = x.copy()
    poisoned[0, 1 + np.argmin(x[0, 1:])] = np.nan  # the smallest kept entry: still NaN
    poisoned[1, 0] = np.nan  # masked out below: ignored
    poisoned[2, np.argmax(x[2])] = np.inf  # ranks first; the k-th is the next finite one
    poisoned[3, :5] = -np.inf  # one entry left, fewer than k
    where = np.ones(6, bool)
    where[0] = False
    got = noised_topk(poisoned, k=2, epsilon=0.5, sample_size=3, noise=noise, where=where)
    want, _ = numpy_noised_topk(poisoned[:3, 1:], noise[:3, 1:], 2, 0.5, -1)
    assert np.isnan(got[0]) and got[3] == -np.inf
    np.testing.assert_allclose(got[1:3], want[1:3], rtol=1e-6)
    hard = noised_topk(poisoned, k=2, epsilon=0.0)
    assert np.isnan(hard[0]) and np.isnan(hard[1])  # unmasked, row 1's NaN counts


def test_traced_epsilon_equals_a_loop():
    x = testing.random_logits(18, (3, 6), dtype=np.float32)
    epsilons = jnp.asarray([0.0, 0.3, 2.0])
    key = jax.random.key(5)
    mapped = jax.jit(jax.vmap(lambda e: noised_topk(x, k=2, epsilon=e, key=key)))(epsilons)
    for epsilon, row in zip(epsilons, mapped, strict=True):
        np.testing.assert_allclose(row, noised_topk(x, k=2, epsilon=float(epsilon), key=key))
    np.testing.assert_allclose(mapped[0], -np.sort(-x, axis=-1)[:, 1], rtol=1e-6)


def test_forward_mode_is_refused_by_name():
    x = jnp.asarray(testing.random_logits(19, (2, 5), dtype=np.float32))
    with pytest.raises(TypeError, match=r"jaxloss\.ops\.noised_topk supports reverse-mode"):
        jax.jacfwd(lambda x: noised_topk(x, k=2, key=jax.random.key(0)))(x)


_CLASS_SPLIT_CODE = """
import re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxloss.ops import noised_topk

rng = np.random.default_rng(0)
key = jax.random.key(7)
mesh = Mesh(np.array(jax.devices()).reshape(1, 4), ("data", "model"))
# 8 classes, k = 2 and 7 (the smallest side); 1000 classes, 250 a device: the selection by
# groups, whose blocks of 125 do not tile in groups of 8 (padded).
for classes, k in ((8, 2), (8, 7), (1000, 3)):
    x = rng.standard_normal((3, classes)).astype(np.float32)
    x[2, -2] = np.nan  # in the last shard: the whole row is NaN on every shard
    where = rng.random((3, classes)) > 0.2

    def op(x, where, epsilon, class_axis_name=None):
        return noised_topk(x, k=k, epsilon=epsilon, sample_size=6, key=key, where=where,
                           class_axis_name=class_axis_name)

    split = jax.shard_map(
        lambda x, where, epsilon: op(x, where, epsilon, "model"),
        mesh=mesh,
        in_specs=(P("data", "model"), P("data", "model"), P()),
        out_specs=P("data"),
    )

    def results(fn, *args):
        grad = jax.grad(lambda *a: jnp.nansum(fn(*a)), argnums=(0, 2))  # x and epsilon
        step = jax.jit(lambda *a: (fn(*a), grad(*a))).lower(*args).compile()
        return step(*args), step.as_text()

    (want, want_grads), _ = results(op, x, where, 0.8)
    np.testing.assert_array_equal(np.isnan(want), [False, False, True])
    # shard_map with class_axis_name, and plain jit on class-sharded inputs (XLA splits the work).
    put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data", "model")))
    for fn, args in ((split, (x, where, 0.8)), (op, (put(x), put(where), 0.8))):
        (got, got_grads), hlo = results(fn, *args)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        for got_grad, want_grad in zip(got_grads, want_grads):
            np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-7)
        # No collective carries a row of classes (with 8 classes the merged
        # candidates, k a device, outnumber them).
        ops = "all-gather|all-to-all|all-reduce|collective-permute|reduce-scatter"
        for shape in re.findall(rf"= ([^=]+?) (?:{ops})(?:-start)?\\(", hlo) * (classes > 8):
            for dims in re.findall(r"\\[([\\d,]*)\\]", shape):
                size = np.prod([int(d) for d in dims.split(",") if d])
                assert size < 3 * (classes - 1), (classes, shape)
print("ok")
"""


def test_key_draws_on_split_classes_are_the_single_device_draws():
    # Classes split 4 ways, inside shard_map and under plain jit: each device draws its own
    # classes' noise, the same numbers as the whole rows on one device; the k-th largest and its
    # gradients (x, epsilon) match, and no collective carries whole rows.
    assert testing.run_on_devices(_CLASS_SPLIT_CODE, num_devices=4).split() == ["ok"]
