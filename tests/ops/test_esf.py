"""log_esf against subset enumeration, an mpmath oracle and finite differences."""

import functools
import itertools
import json

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from jaxloss.ops import log_esf
from jaxloss.ops._esf import log_esf_and_top_k
from tests import testing

mpmath.mp.dps = 40


@functools.partial(jax.jit, static_argnums=2)
def value_and_vjp(x, cotangent, k):
    value, vjp = jax.vjp(lambda v: log_esf(v, k), x)
    return value, vjp(cotangent)[0]


def brute_log_esf(x, k):
    """log sigma_j of exp(x) by enumerating every j-subset (float64, small n)."""
    n = x.shape[-1]
    out = np.zeros(x.shape[:-1] + (k + 1,))
    for j in range(1, k + 1):
        sums = [x[..., list(s)].sum(-1) for s in itertools.combinations(range(n), j)]
        stacked = np.stack(sums, -1)
        top = stacked.max(-1, keepdims=True)
        out[..., j] = top[..., 0] + np.log(np.exp(stacked - top).sum(-1))
    return out


def mp_esf(x, k):
    """sigma_0..sigma_k of exp(x) for one row, in mpmath (exact to 40 digits)."""
    sigma = [mpmath.mpf(1)] + [mpmath.mpf(0)] * k
    for value in x:
        z = mpmath.exp(mpmath.mpf(float(value)))
        for j in range(k, 0, -1):
            sigma[j] += z * sigma[j - 1]
    return sigma


def mp_log_esf(x, k):
    return np.array([float(mpmath.log(s)) for s in mp_esf(x, k)])


def mp_grad(x, k, cotangent):
    """sum_j cotangent_j d log sigma_j / d x_i, from sigma_{j-1} of the row without i."""
    sigma = mp_esf(x, k)
    grad = np.zeros(len(x))
    for i, value in enumerate(x):
        without = mp_esf(np.delete(x, i), k - 1)
        z = mpmath.exp(mpmath.mpf(float(value)))
        grad[i] = float(sum(cotangent[j] * z * without[j - 1] / sigma[j] for j in range(1, k + 1)))
    return grad


@pytest.mark.parametrize("n,k", [(1, 1), (4, 4), (6, 1), (6, 3), (7, 5), (9, 2)])
def test_matches_subset_enumeration(n, k):
    x = testing.random_logits(n + k, (3, n), scale=2.0)
    testing.assert_matches_oracle(lambda v: log_esf(v, k), lambda v: brute_log_esf(v, k), x)


def test_gradient_finite_differences():
    x = testing.random_logits(1, (2, 7), scale=2.0)
    weights = jnp.asarray(np.random.default_rng(0).standard_normal(5))
    testing.check_grads_f64(lambda v: jnp.sum(log_esf(v, 4) * weights), (x,), eps=1e-5)


def _row(kind, n):
    rng = np.random.default_rng(n)
    if kind == "gauss":
        return rng.standard_normal(n)
    if kind == "dominant":  # one subset dominates: the reference's flagged, approximated case
        x = rng.standard_normal(n)
        x[:5] += 30.0
        return x
    if kind == "near-threshold":  # five classes just above the rest, the rest spread out
        x = 3.0 * rng.standard_normal(n)
        x[rng.permutation(n)[:5]] = x.max() + rng.uniform(0.0, 0.5, 5)
        return x
    if kind == "ties":
        return np.repeat(rng.standard_normal(n // 4), 4)[:n]
    raise ValueError(kind)


KINDS = ["gauss", "dominant", "near-threshold", "ties"]


@pytest.mark.parametrize("kind", KINDS)
def test_float64_matches_mpmath(kind):
    n, k = 40, 5
    x = _row(kind, n)
    cotangent = np.linspace(-1.0, 1.0, k + 1)
    with jax.enable_x64(True):
        value, grad = value_and_vjp(jnp.asarray(x), jnp.asarray(cotangent), k)
    np.testing.assert_allclose(value, mp_log_esf(x, k), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(grad, mp_grad(x, k, cotangent), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [6, 17, 33])
def test_odd_tree_levels_match_mpmath(n):
    # Widths that turn odd on the way up (17 -> 9 -> 5 -> 3) pad the product tree with a node.
    k = 5
    x = _row("gauss", n)
    cotangent = np.linspace(-1.0, 1.0, k + 1)
    with jax.enable_x64(True):
        value, grad = value_and_vjp(jnp.asarray(x), jnp.asarray(cotangent), k)
    np.testing.assert_allclose(value, mp_log_esf(x, k), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(grad, mp_grad(x, k, cotangent), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_matches_mpmath(kind):
    n, k = 40, 5
    x = _row(kind, n).astype(np.float32)
    cotangent = np.linspace(-1.0, 1.0, k + 1).astype(np.float32)
    value, grad = value_and_vjp(jnp.asarray(x), jnp.asarray(cotangent), k)
    want = mp_log_esf(x, k)
    np.testing.assert_allclose(value, want, rtol=2e-7, atol=2e-6)
    np.testing.assert_allclose(grad, mp_grad(x, k, cotangent), rtol=0, atol=3e-6)


def test_large_n_against_mpmath():
    x = testing.random_logits(3, (1000,), scale=1.0)
    with jax.enable_x64(True):
        got64 = np.asarray(log_esf(jnp.asarray(x), 5))
    want = mp_log_esf(x, 5)
    np.testing.assert_allclose(got64, want, rtol=1e-13, atol=1e-12)
    got32 = np.asarray(log_esf(jnp.asarray(x, jnp.float32), 5))
    want32 = mp_log_esf(x.astype(np.float32), 5)
    np.testing.assert_allclose(got32, want32, rtol=3e-7, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e2, 1e4])
@pytest.mark.parametrize("offset", [-1e3, 0.0, 1e3])
def test_float32_stability_sweep(scale, offset):
    n, k = 40, 5
    x = (offset + scale * np.random.default_rng(7).standard_normal(n)).astype(np.float32)
    cotangent = np.array([0.0, 0.5, -1.0, 1.0, 2.0, -0.5], np.float32)
    value, grad = value_and_vjp(jnp.asarray(x), jnp.asarray(cotangent), k)
    chex.assert_tree_all_finite((value, grad))
    want = mp_log_esf(x, k)
    # The output's own float32 spacing bounds its accuracy: log sigma_j ~ j * offset.
    np.testing.assert_allclose(value, want, rtol=4e-7, atol=1e-6)
    np.testing.assert_allclose(grad, mp_grad(x, k, cotangent), rtol=0, atol=1e-5)


def test_shift_invariance():
    x = testing.random_logits(4, (3, 12), scale=3.0)
    with jax.enable_x64(True):
        base = np.asarray(log_esf(jnp.asarray(x), 4))
        shifted = np.asarray(log_esf(jnp.asarray(x + 123.5), 4))
    np.testing.assert_allclose(shifted - base, np.broadcast_to(123.5 * np.arange(5), base.shape))


def test_gradients_sum_to_degree():
    # sum_i d log sigma_j / d x_i = j for every j.
    x = jnp.asarray(testing.random_logits(5, (40,), scale=4.0, dtype=np.float32))
    grads = jax.vmap(lambda c: value_and_vjp(x, c, 5)[1])(jnp.eye(6))
    np.testing.assert_allclose(jnp.sum(grads, -1), np.arange(6), rtol=2e-6, atol=1e-6)
    assert jnp.all((grads >= 0) & (grads <= 1 + 1e-6))


def test_axis_batching_and_dtypes():
    x = testing.random_logits(6, (3, 40, 2), scale=1.0, dtype=np.float32)
    out = jax.jit(lambda v: log_esf(v, 5, axis=1))(x)
    chex.assert_shape(out, (3, 2, 6))
    rows = jnp.moveaxis(x, 1, -1)
    np.testing.assert_allclose(out[0], jax.vmap(lambda r: log_esf(r, 5))(rows[0]), rtol=1e-6)
    assert log_esf(jnp.asarray(x, jnp.bfloat16), 5, axis=1).dtype == jnp.bfloat16


def test_product_tree_runs_in_one_branch_also_under_vmap():
    # Each wide level of the tree (over 32 pairs) is computed in a conditional's branch, which
    # keeps XLA:CPU from computing it twice; under jax.vmap its predicate must stay unbatched (a
    # batched one inlines a select of both branches), and the batched values and gradients are
    # the unbatched ones.
    x = jnp.asarray(testing.random_logits(10, (2, 3, 141), scale=2.0, dtype=np.float32))
    weights = jnp.asarray(np.random.default_rng(11).standard_normal((2, 3, 6)), jnp.float32)

    def total(v, w):
        return jnp.sum(log_esf(v, 5) * w)

    step = jax.jit(jax.vmap(jax.value_and_grad(total)))
    assert " conditional(" in step.lower(x, weights).compile().as_text()
    value, grad = step(x, weights)
    for i in range(2):
        want_value, want_grad = jax.jit(jax.value_and_grad(total))(x[i], weights[i])
        np.testing.assert_allclose(value[i], want_value, rtol=1e-6)
        np.testing.assert_allclose(grad[i], want_grad, rtol=1e-6, atol=1e-7)


def test_shared_top_k_and_its_gradient():
    # The selection log_esf makes is returned for reuse: lax.top_k's values, indices and gradient.
    x = jnp.asarray(testing.random_logits(9, (3, 12), scale=2.0, dtype=np.float32))
    log_sigma, top, index = jax.jit(lambda v: log_esf_and_top_k(v, 4))(x)
    want_top, want_index = jax.lax.top_k(x, 5)
    np.testing.assert_array_equal(top, want_top)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(log_sigma, log_esf(x, 4))
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5)), jnp.float32)

    def both(v):
        log_sigma, top, _ = log_esf_and_top_k(v, 4)
        return jnp.sum(top * weights[0]) + jnp.sum(log_sigma * weights[1])

    want = jax.grad(lambda v: jnp.sum(jax.lax.top_k(v, 5)[0] * weights[0]))(x)
    want += jax.grad(lambda v: jnp.sum(log_esf(v, 4) * weights[1]))(x)
    np.testing.assert_allclose(jax.grad(both)(x), want, rtol=1e-6, atol=1e-7)


def test_bad_inputs():
    x = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="needs at least 5"):
        log_esf(x, 5)
    with pytest.raises(ValueError, match="k must be in"):
        log_esf(x, 0)
    with pytest.raises(TypeError, match="k must be a Python int"):
        log_esf(x, 2.0)
    with pytest.raises(TypeError, match="floating-point"):
        log_esf(jnp.zeros((2, 4), jnp.int32), 2)
    with pytest.raises(ValueError, match="too large"):
        log_esf(jnp.zeros((1, 1000)), 40)
    with pytest.raises(ValueError, match="not an axis of an enclosing shard_map"):
        log_esf(x, 2, class_axis_name="model")


def test_reverse_mode_only_with_second_derivatives():
    x = testing.random_logits(8, (2, 7), scale=2.0)
    weights = jnp.asarray(np.random.default_rng(1).standard_normal(4))

    def fn(v):
        return jnp.sum(log_esf(v, 3) * weights)

    with pytest.raises(TypeError, match=r"jaxloss\.ops\.log_esf supports reverse-mode"):
        jax.jacfwd(fn)(jnp.asarray(x, jnp.float32))
    # The VJP is built from differentiable operations: reverse over reverse is exact.
    testing.check_grads_f64(fn, (x,), order=2, modes=("rev",), eps=1e-5)


# Inside shard_map, with the terms split over the devices of a mesh axis: the whole row's values,
# gradients and second derivatives.
_SHARDED_CODE = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from jaxloss.ops import log_esf

rng = np.random.default_rng(0)
# name -> (devices the terms are split over, n, k, highest derivative): blocks narrower than k
# (a device's tree root has fewer than k coefficients) on an odd number of devices (the devices'
# tree pads), and n = k (no rest: every term is in the top set).
CASES = {"narrow": (3, 6, 3, 2), "no_rest": (4, 4, 4, 1)}
results = {}
for name, (devices, n, k, highest) in CASES.items():
    mesh = Mesh(np.array(jax.devices()[:devices]), ("model",))
    # Ties within and across devices (+ 0.0: no -0.0, which ties with 0.0 in value only).
    x = jnp.asarray(np.round(4 * rng.standard_normal((3, n))) + 0.0, jnp.float32)
    weights = jnp.asarray(rng.standard_normal(k + 1), jnp.float32)
    whole = lambda x: log_esf(x, k)
    split = jax.shard_map(
        lambda x: log_esf(x, k, class_axis_name="model"), mesh=mesh,
        in_specs=P(None, "model"), out_specs=P())
    grad = lambda f: jax.grad(lambda v: jnp.sum(f(v) * weights))
    # Second derivatives: reverse over log_esf's custom VJP, through the devices' exchange.
    second = lambda f: jax.grad(lambda v: jnp.sum(jnp.sin(grad(f)(v))))
    problems = []
    for order, derivative in enumerate((lambda f: f, grad, second)[: highest + 1]):
        want, got = jax.jit(derivative(whole))(x), jax.jit(derivative(split))(x)
        if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            problems.append(f"derivative {order}: off by {float(np.abs(got - want).max())}")
    results[name] = problems
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def sharded_failures() -> dict[str, list[str]]:
    out = testing.run_on_devices(_SHARDED_CODE, num_devices=4)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["narrow", "no_rest"])
def test_terms_split_over_shard_map_devices_match_whole_rows(sharded_failures, case):
    found = sharded_failures[case]
    assert found == [], "\n".join(found)
