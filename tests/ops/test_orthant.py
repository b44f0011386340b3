"""Tests of the Gaussian positive-orthant probability (Genz estimator and quadrature)."""

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from jaxloss.ops import gaussian_orthant_probability
from tests import testing


def genz_numpy(mu, uniforms):
    """The Genz scheme written out channel by channel in float64, one row at a time.

    Returns P (B,) and the gradient estimates (B, D) in the original (unsorted) entry order.
    """
    mu = np.asarray(mu, np.float64)
    uniforms = np.asarray(uniforms, np.float64)
    batch, dim = mu.shape
    k = uniforms.shape[0]
    chol = np.linalg.cholesky(np.eye(k) + np.ones((k, k)))
    probability = np.zeros(batch)
    gradient = np.zeros((batch, dim))
    for b in range(batch):
        order = np.argsort(mu[b], kind="stable")[:k]
        m = mu[b, order]
        for channel in range(k + 1):
            w = np.zeros((k, uniforms.shape[1]))
            product = np.ones(uniforms.shape[1])
            for i in range(k):
                limit = -(m[i] + chol[i, :i] @ w[:i]) / chol[i, i]
                if i == channel:
                    product *= stats.norm.pdf(limit) / chol[i, i]
                    w[i] = np.clip(limit, -5, 5)
                else:
                    e = special.erf(limit / math.sqrt(2))
                    product *= (1 - e) / 2
                    draw = math.sqrt(2) * special.erfinv(e + uniforms[i, :, b] * (1 - e))
                    w[i] = np.clip(draw, -5, 5)
            if channel == k:
                probability[b] = product.mean()
            else:
                gradient[b, order[channel]] = product.mean()
    return probability, gradient


def quadrature_numpy(mu):
    """P by adaptive integration of int phi(t) prod Phi(mu_k + t) dt (scipy.integrate.quad)."""
    from scipy import integrate

    return np.array(
        [
            integrate.quad(
                lambda t, m=m: stats.norm.pdf(t) * np.prod(stats.norm.cdf(m + t)),
                -np.inf,
                np.inf,
                epsabs=1e-14,
                epsrel=1e-12,
            )[0]
            for m in np.asarray(mu, np.float64)
        ]
    )


def _value_and_grad(mu, **kwargs):
    return jax.value_and_grad(lambda x: jnp.sum(gaussian_orthant_probability(x, **kwargs)))(mu)


_genz_value_and_grad = jax.jit(lambda mu, u: _value_and_grad(mu, uniforms=u))
_genz_truncated = jax.jit(lambda mu, u: _value_and_grad(mu, uniforms=u, truncate_classes=3))
_quadrature_value_and_grad = jax.jit(lambda mu: _value_and_grad(mu, method="quadrature"))


def _test_rows(seed, batch=4, dim=6):
    mu = testing.random_logits(seed, (batch, dim), scale=1.5)
    mu[0, :3] = mu[0, 3]  # ties: the stable sort decides which entry each uniform row drives
    mu[1] -= 2.0
    return mu


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_genz_matches_independent_numpy_scheme(dtype, atol):
    mu = _test_rows(0).astype(dtype)
    u = np.random.default_rng(1).uniform(size=(6, 8, 4)).astype(dtype)
    want_p, want_g = genz_numpy(mu, u)
    with jax.enable_x64(dtype == np.float64):
        p, g = _genz_value_and_grad(mu, u)
        assert p.dtype == dtype
    np.testing.assert_allclose(p, want_p.sum(), atol=4 * atol, rtol=0)
    per_row = jax.jit(lambda mu, u: gaussian_orthant_probability(mu, uniforms=u))
    with jax.enable_x64(dtype == np.float64):
        np.testing.assert_allclose(per_row(mu, u), want_p, atol=atol, rtol=0)
    np.testing.assert_allclose(g, want_g, atol=atol, rtol=0)


def test_genz_over_several_blocks_of_steps_matches_numpy():
    # 19 entries: the gradient channels run in three blocks of steps (1-8, 9-16, 17-18), each
    # taking on the channels born in the one before.
    mu = testing.random_logits(5, (2, 19), scale=1.5)
    u = np.random.default_rng(6).uniform(size=(19, 4, 2))
    want_p, want_g = genz_numpy(mu, u)
    with jax.enable_x64(True):
        p, g = _genz_value_and_grad(mu, u)
    np.testing.assert_allclose(p, want_p.sum(), atol=1e-12, rtol=0)
    np.testing.assert_allclose(g, want_g, atol=1e-12, rtol=0)


def test_genz_truncated_matches_numpy_and_bounds_probability():
    mu = _test_rows(2)
    u = np.random.default_rng(3).uniform(size=(3, 8, 4))
    want_p, want_g = genz_numpy(mu, u)
    with jax.enable_x64(True):
        p, g = _genz_truncated(mu, u)
    np.testing.assert_allclose(p, want_p.sum(), atol=1e-12)
    np.testing.assert_allclose(g, want_g, atol=1e-12)
    # Three of the six entries of each row are ignored: zero gradient there.
    assert np.all(np.sum(np.asarray(g) == 0.0, axis=1) >= 3)
    assert np.all(want_p >= quadrature_numpy(mu) - 1e-3)


def test_batch_shape_and_vmap():
    mu = testing.random_logits(4, (2, 3, 5), dtype=np.float32)
    key = jax.random.key(0)
    p = gaussian_orthant_probability(mu, key=key)
    chex.assert_shape(p, (2, 3))
    u = jax.random.uniform(key, (5, 16, 2, 3))
    batched = gaussian_orthant_probability(mu, uniforms=u)
    mapped = jax.vmap(
        lambda m, v: gaussian_orthant_probability(m, uniforms=v), in_axes=(0, 2), out_axes=0
    )(mu, u)
    np.testing.assert_allclose(batched, mapped, rtol=1e-6)


def test_single_entry_is_exact_without_key():
    mu = np.array([[-3.0], [0.0], [0.7], [4.0]])
    with jax.enable_x64(True):
        p, g = jax.jit(_value_and_grad)(mu)
        per_row = gaussian_orthant_probability(mu)
        truncated = gaussian_orthant_probability(
            np.concatenate([mu, mu + 1], 1), truncate_classes=1
        )
    want = stats.norm.cdf(mu[:, 0] / math.sqrt(2))
    np.testing.assert_allclose(per_row, want, rtol=1e-13)
    np.testing.assert_allclose(truncated, want, rtol=1e-13)
    np.testing.assert_allclose(p, want.sum(), rtol=1e-13)
    np.testing.assert_allclose(g[:, 0], stats.norm.pdf(mu[:, 0] / math.sqrt(2)) / math.sqrt(2))


def test_quadrature_against_scipy_multivariate_normal():
    mu = testing.random_logits(5, (3, 3), scale=1.0)
    with jax.enable_x64(True):
        p = gaussian_orthant_probability(mu, method="quadrature")
    dim = mu.shape[1]
    cov = np.eye(dim) + 1.0
    want = [stats.multivariate_normal.cdf(m, np.zeros(dim), cov, abseps=1e-6) for m in mu]
    np.testing.assert_allclose(p, want, atol=1e-5)


def test_quadrature_against_adaptive_integration_and_ties():
    mu = np.concatenate([_test_rows(6), np.zeros((1, 6)), np.full((1, 6), -3.0)])
    with jax.enable_x64(True):
        p, g = _quadrature_value_and_grad(mu)
        rows = gaussian_orthant_probability(mu, method="quadrature")
    np.testing.assert_allclose(rows, quadrature_numpy(mu), atol=1e-12)
    # D + 1 tied classes: each wins with probability 1 / (D + 1).
    np.testing.assert_allclose(rows[4], 1 / 7, rtol=1e-12)
    np.testing.assert_allclose(g[4], g[4, 0], rtol=1e-10)
    testing.check_grads_f64(
        lambda x: gaussian_orthant_probability(x, method="quadrature"), (mu,), atol=1e-8
    )


def test_quadrature_float32_close_to_float64():
    mu = np.concatenate([_test_rows(7), testing.random_logits(8, (4, 6), scale=10.0)])
    p32, g32 = _quadrature_value_and_grad(mu.astype(np.float32))
    with jax.enable_x64(True):
        p64, g64 = _quadrature_value_and_grad(mu)
    assert p32.dtype == np.float32
    np.testing.assert_allclose(p32, p64, rtol=1e-5)
    np.testing.assert_allclose(g32, g64, atol=1e-6)


_many_keys = jax.jit(
    jax.vmap(
        lambda key, mu: _value_and_grad(mu, key=key, sample_size=16),
        in_axes=(0, None),
    )
)


def test_genz_is_unbiased_against_quadrature():
    """Means over many keys agree with the quadrature within 4 standard errors."""
    mu = np.array([[0.3, -0.5, 1.0, 0.0], [1.5, 2.0, 0.5, 1.0]], np.float32)
    keys = jax.random.split(jax.random.key(0), 2000)
    p, g = _many_keys(keys, mu)
    want_p, want_g = _quadrature_value_and_grad(mu)
    se = lambda x: x.std(axis=0) / math.sqrt(len(keys))  # noqa: E731
    assert abs(p.mean() - want_p) < 4 * se(p)
    assert np.all(np.abs(g.mean(axis=0) - want_g) < 4 * se(g) + 1e-6)


def test_genz_variance_is_far_below_plain_monte_carlo():
    mu = np.array([[0.0, 0.0]], np.float32)
    keys = jax.random.split(jax.random.key(1), 1000)
    p, _ = _many_keys(keys, mu)
    plain_mc_std = math.sqrt((1 / 3) * (2 / 3) / 16)
    assert p.std() < 0.3 * plain_mc_std


@pytest.mark.parametrize("method", ["genz", "quadrature"])
def test_extreme_inputs_saturate_without_nan(method):
    mu = np.array(
        [[-50.0, 0.0, 1.0], [1e4, 1e4, 1e4], [-1e4, 1e4, 0.0], [30.0, -30.0, 30.0]], np.float32
    )
    fn = lambda x: gaussian_orthant_probability(x, key=jax.random.key(0), method=method)  # noqa: E731
    testing.assert_finite_value_and_grad(fn, mu)
    p = fn(mu)
    np.testing.assert_allclose(p, [0.0, 1.0, 0.0, 0.0], atol=1e-30)


def test_float32_erf_rounding_does_not_produce_nan():
    # Limits where float32 erf rounds to (or past) +-1.
    mu = np.stack([np.linspace(-8, 8, 400, dtype=np.float32)] * 3, axis=1)
    mu[:, 1] += 0.3
    testing.assert_finite_value_and_grad(
        lambda x: gaussian_orthant_probability(x, key=jax.random.key(2), sample_size=64), mu
    )


def test_bad_inputs():
    mu = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="method"):
        gaussian_orthant_probability(mu, method="mc")
    with pytest.raises(ValueError, match=r"key is required.*got key=None"):
        gaussian_orthant_probability(mu)
    with pytest.raises(ValueError, match="key is required"):
        gaussian_orthant_probability(mu, truncate_classes=2)
    with pytest.raises(
        ValueError, match=r"uniforms must have shape \(k, N, \*batch\) = \(3, N, 2\)"
    ):
        gaussian_orthant_probability(mu, uniforms=np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="truncate_classes"):
        gaussian_orthant_probability(mu, key=jax.random.key(0), truncate_classes=0)
    with pytest.raises(ValueError, match="sample_size"):
        gaussian_orthant_probability(mu, key=jax.random.key(0), sample_size=0)
    with pytest.raises(TypeError, match="floating-point"):
        gaussian_orthant_probability(np.zeros((2, 3), np.int32), method="quadrature")


@pytest.mark.parametrize("method", ["genz", "quadrature"])
def test_infinite_entries_are_their_limits_and_nan_rows_stay_nan(method):
    mu = np.array([[0.3, np.inf, -0.5], [0.3, -np.inf, -0.5], [np.nan, 0.3, -0.5]], np.float32)
    key = jax.random.key(0)
    fn = lambda x, t=None: gaussian_orthant_probability(  # noqa: E731
        x, key=key, method=method, truncate_classes=t
    )
    p, g = jax.value_and_grad(lambda x: jnp.sum(fn(x)[:2]))(mu)
    # +inf always holds: the row equals one with an entry far past saturation; -inf never does.
    np.testing.assert_allclose(fn(mu)[0], fn(np.where(mu == np.inf, 50.0, mu))[0], rtol=1e-6)
    if method == "quadrature":
        np.testing.assert_allclose(fn(mu)[0], fn(mu[:1, [0, 2]])[0], rtol=1e-6)
    assert fn(mu)[1] == 0.0
    assert np.all(np.isfinite(g[:2])) and g[0, 1] == 0.0 and g[1, 1] == 0.0
    # NaN is sorted first, so truncation keeps it.
    assert np.isnan(fn(mu)[2]) and np.isnan(fn(mu, 1)[2]) and np.isnan(fn(mu, 2)[2])


@pytest.mark.parametrize("method", ["genz", "quadrature"])
def test_forward_mode_names_the_op(method):
    mu = np.zeros((2, 3), np.float32)
    with pytest.raises(
        TypeError, match=r"jaxloss\.ops\.gaussian_orthant_probability supports reverse-mode"
    ):
        jax.jacfwd(lambda x: gaussian_orthant_probability(x, key=jax.random.key(0), method=method))(
            mu
        )


@pytest.mark.parametrize(
    "mu_spec, noise, truncate_classes",
    [("data", "key", None), ("data", "uniforms", 3), (None, "uniforms", None)],
    ids=["sharded-key", "sharded-uniforms-truncated", "replicated-mu-sharded-uniforms"],
)
def test_genz_under_shard_map_with_checked_types(mu_spec, noise, truncate_classes):
    # A one-device mesh type-checks the varying mesh axes (check_vma) like a real one, in-process.
    # The estimate varies over the axes of mu and of the noise: the scan's carry must too, and
    # a replicated mu's gradient must come back replicated.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    P = jax.sharding.PartitionSpec
    mu = jnp.asarray(_test_rows(5), jnp.float32)
    u = jax.random.uniform(jax.random.key(6), (truncate_classes or 6, 8, 4))
    kwargs = {"key": jax.random.key(7)} if noise == "key" else {}

    def total(mu, u):
        noise_kwargs = {"uniforms": u} if noise == "uniforms" else {}
        return jnp.sum(
            gaussian_orthant_probability(
                mu, truncate_classes=truncate_classes, **kwargs, **noise_kwargs
            )
        )

    mapped = jax.shard_map(
        lambda mu, u: total(mu, u)[None],
        mesh=mesh,
        in_specs=(P(mu_spec), P(None, None, "data")),
        out_specs=P("data"),
    )
    value, grad = jax.jit(jax.value_and_grad(lambda mu: mapped(mu, u)[0]))(mu)
    want_value, want_grad = jax.jit(jax.value_and_grad(total))(mu, u)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)


def test_rows_split_over_shard_map_devices_equal_whole_rows():
    # 16 entries split over 4 devices: the quadrature's sums, truncation's selection (ties across
    # shards, a NaN selected first, +-inf) and the gathered rows of untruncated Genz must give the
    # whole-row values and gradients, with the same draw on every shard of a row.
    out = testing.run_on_devices(
        """
        import json
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, PartitionSpec as P
        from jaxloss.ops import gaussian_orthant_probability

        mesh = Mesh(np.array(jax.devices()), ("model",))
        rng = np.random.default_rng(0)
        mu = jnp.asarray(rng.integers(-2, 3, (4, 16)) * 0.5, jnp.float32)
        mu = mu.at[1, 6].set(jnp.inf).at[2, 9].set(-jnp.inf).at[3, 13].set(jnp.nan)
        cases = {
            "quadrature": dict(method="quadrature"),
            "quadrature_truncated": dict(method="quadrature", truncate_classes=3),
            "genz_truncated": dict(key=jax.random.key(0), truncate_classes=3),
            "genz": dict(key=jax.random.key(0)),
        }
        results = {}
        for name, kwargs in cases.items():
            def value_and_grad(class_axis_name=None, kwargs=kwargs):
                def total(mu):
                    p = gaussian_orthant_probability(
                        mu, class_axis_name=class_axis_name, **kwargs
                    )
                    return jnp.sum(p[:3]), p
                return jax.value_and_grad(total, has_aux=True)

            (_, want), want_grad = jax.jit(value_and_grad())(mu)
            split = jax.shard_map(
                value_and_grad("model"), mesh=mesh, in_specs=P(None, "model"),
                out_specs=((P(), P()), P(None, "model")),
            )
            (_, got), got_grad = jax.jit(split)(mu)
            results[name] = [
                what for what, a, b in (("value", got, want), ("gradient", got_grad, want_grad))
                if not np.allclose(a, b, rtol=1e-5, atol=1e-7, equal_nan=True)
            ] + ([] if np.isnan(got[3]) else ["NaN row not NaN"])
        print(json.dumps(results))
        """
    )
    results = json.loads(out.strip().splitlines()[-1])
    assert results == dict.fromkeys(results, []) and len(results) == 4, results
