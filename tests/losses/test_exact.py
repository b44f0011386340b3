"""Tests of the EXACT loss."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxloss
from tests import testing
from tests.ops.test_orthant import quadrature_numpy


def exact_numpy(logits, labels, *, temperature=None, margin=None, normalize=None, truncate=None):
    """The reference pipeline in float64: batch standardization, differences, clip, /T, integral."""
    z = np.asarray(logits, np.float64)
    if normalize is None:
        normalize = temperature is not None
    if normalize:
        z = (z - z.mean()) / z.std(ddof=1)
    rows = []
    for row, label in zip(z, labels, strict=True):
        d = row[label] - np.delete(row, label)
        if margin is not None:
            d = np.minimum(d, margin)
        if temperature is not None:
            d = d / temperature
        if truncate is not None:
            d = np.sort(d)[:truncate]
        rows.append(d)
    return 1.0 - quadrature_numpy(np.stack(rows))


def _quadrature_loss(logits, labels, **kwargs):
    return jaxloss.exact_loss(logits, labels, key=None, method="quadrature", **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"temperature": None},
        {"temperature": 0.7},
        {"temperature": 0.5, "margin": 0.3},
        {"temperature": 2.0, "normalize_logits": False},
        {"temperature": 0.5, "truncate_classes": 2},
    ],
)
def test_quadrature_matches_float64_pipeline(kwargs):
    logits = testing.random_logits(0, (5, 4), scale=1.5)
    labels = testing.random_labels(0, (5,), 4)
    oracle_kwargs = {
        "temperature": kwargs.get("temperature", 1.0),
        "margin": kwargs.get("margin"),
        "normalize": kwargs.get("normalize_logits"),
        "truncate": kwargs.get("truncate_classes"),
    }
    testing.assert_matches_oracle(
        lambda x, y: _quadrature_loss(x, y, **kwargs),
        lambda x, y: exact_numpy(x, y, **oracle_kwargs),
        logits,
        labels,
        atol=1e-10,
    )


def test_two_classes_closed_form_and_gradients():
    logits = testing.random_logits(1, (6, 2))
    labels = testing.random_labels(1, (6,), 2)
    diff = logits[np.arange(6), labels] - logits[np.arange(6), 1 - labels]
    want = 1.0 - stats.norm.cdf(diff / (0.8 * math.sqrt(2)))
    loss = lambda x: jaxloss.exact_loss(  # noqa: E731
        x, labels, key=None, temperature=0.8, normalize_logits=False
    )
    with jax.enable_x64(True):
        np.testing.assert_allclose(loss(logits), want, rtol=1e-12)
    testing.check_grads_f64(loss, (logits,), atol=1e-8)


def test_gradients_match_finite_differences_with_temperature():
    logits = testing.random_logits(2, (4, 5), scale=1.0)
    labels = testing.random_labels(2, (4,), 5)
    testing.check_grads_f64(
        jax.jit(lambda x, t: _quadrature_loss(x, labels, temperature=t, margin=0.5)), (logits, 0.6)
    )


def test_genz_loss_is_close_to_quadrature_with_temperature_gradient():
    logits = testing.random_logits(3, (8, 6), scale=1.0).astype(np.float32)
    labels = testing.random_labels(3, (8,), 6)

    def mean_loss(t, key, method):
        losses = jaxloss.exact_loss(
            logits, labels, key=key, temperature=t, margin=1.0, sample_size=2048, method=method
        )
        return jnp.mean(losses)

    value, grad_t = jax.value_and_grad(mean_loss)(0.5, jax.random.key(0), "genz")
    want, want_t = jax.value_and_grad(mean_loss)(0.5, None, "quadrature")
    np.testing.assert_allclose(value, want, atol=5e-3)
    np.testing.assert_allclose(grad_t, want_t, atol=0.02 * abs(want_t) + 5e-3)


def test_margin_clip_stops_gradient_above_and_passes_at_equality():
    logits = np.array([[3.0, 0.0, 1.0], [1.0, 0.0, 0.5]], np.float32)
    labels = np.array([0, 0])
    grad = jax.grad(
        lambda x: jnp.sum(
            _quadrature_loss(x, labels, temperature=1.0, margin=1.0, normalize_logits=False)
        )
    )(logits)
    # Row 0: z_0 - z_1 = 3 > 1 is clipped; z_0 - z_2 = 2 too: no gradient at all.
    np.testing.assert_array_equal(grad[0], 0.0)
    # Row 1: z_0 - z_1 = 1 == margin still passes its gradient.
    assert grad[1, 1] > 0.0


def test_where_mask_equals_dropping_the_class():
    logits = testing.random_logits(4, (5, 4))
    labels = np.array([0, 1, 2, 1, 0])
    where = np.array([True, True, True, False])
    with jax.enable_x64(True):
        masked_loss = lambda x: _quadrature_loss(x, labels, temperature=0.5, where=where)  # noqa: E731
        masked = jax.jit(masked_loss)(logits)
        grad = jax.jit(jax.grad(lambda x: jnp.sum(masked_loss(x))))(logits)
        dropped = jax.jit(lambda x: _quadrature_loss(x, labels, temperature=0.5))(logits[:, :3])
    np.testing.assert_allclose(masked, dropped, rtol=1e-12)
    np.testing.assert_array_equal(grad[:, 3], 0.0)


def test_truncation_lower_bounds_the_loss():
    logits = testing.random_logits(5, (6, 8)).astype(np.float32)
    labels = testing.random_labels(5, (6,), 8)
    full = _quadrature_loss(logits, labels, temperature=1.0)
    truncated = jaxloss.exact_loss(
        logits, labels, key=jax.random.key(0), temperature=1.0, truncate_classes=3
    )
    assert np.all(np.asarray(truncated) <= np.asarray(full) + 0.05)
    exact_two = jaxloss.exact_loss(logits, labels, key=None, temperature=1.0, truncate_classes=1)
    want = exact_numpy(logits, labels, temperature=1.0, truncate=1)
    np.testing.assert_allclose(exact_two, want, atol=2e-6)


def test_key_determinism_axis_and_dtypes():
    logits = testing.random_logits(6, (4, 5), dtype=np.float32)
    labels = testing.random_labels(6, (4,), 5)
    key = jax.random.key(7)
    loss = jax.jit(lambda x, k: jaxloss.exact_loss(x, labels, key=k, temperature=1.0))
    a, b = loss(logits, key), loss(logits, key)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, loss(logits, jax.random.key(8)))
    moved = jaxloss.exact_loss(logits.T, labels, key=key, temperature=1.0, axis=0)
    np.testing.assert_allclose(moved, a, rtol=1e-6)
    half = jaxloss.exact_loss(logits.astype(jnp.bfloat16), labels, key=key, temperature=1.0)
    assert half.dtype == jnp.bfloat16


@pytest.mark.parametrize("method", ["genz", "quadrature"])
def test_extreme_logits_are_finite(method):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [5.0, 5.0, 5.0]], np.float32)
    labels = np.array([0, 0, 1])
    key = jax.random.key(0)
    for kwargs in [{"temperature": None}, {"temperature": 0.01, "margin": 2.0}]:
        fn = jax.jit(
            lambda x, kw=kwargs: jaxloss.exact_loss(x, labels, key=key, method=method, **kw)
        )
        testing.assert_finite_value_and_grad(fn, logits)
        # Constant logits normalize to ties: loss 1 - 1/C.
        testing.assert_finite_value_and_grad(fn, np.zeros_like(logits))
        if kwargs["temperature"] is not None:
            np.testing.assert_allclose(fn(np.zeros_like(logits)), 2 / 3, atol=0.05)
        else:
            # The hopeless row gives loss 1, not NaN.
            np.testing.assert_allclose(fn(logits)[:2], [0.0, 1.0], atol=1e-6)


def test_bad_inputs():
    logits = np.zeros((2, 3), np.float32)
    labels = np.array([0, 1])
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="margin=1.0 requires a temperature"):
        jaxloss.exact_loss(logits, labels, key=key, temperature=None, margin=1.0)
    with pytest.raises(ValueError, match="temperature must be in"):
        jaxloss.exact_loss(logits, labels, key=key, temperature=0.0)
    with pytest.raises(ValueError, match="key is required"):
        jaxloss.exact_loss(logits, labels, key=None)
    with pytest.raises(ValueError, match="truncate_classes"):
        jaxloss.exact_loss(logits, labels, key=key, truncate_classes=0)
    with pytest.raises(ValueError, match="at least 2"):
        jaxloss.exact_loss(logits[:, :1], labels, key=key)
    with pytest.raises(TypeError, match="integer"):
        jaxloss.exact_loss(logits, labels.astype(np.float32), key=key)


@pytest.mark.slow
def test_sharded_statistics_noise_and_gradients():
    # Every check that needs several devices, in one subprocess (it takes seconds to start).
    out = testing.run_on_devices(
        """
        import json
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import jaxloss

        mesh = Mesh(np.array(jax.devices()), ("data",))
        x = jax.random.normal(jax.random.key(0), (16, 5)) * 2.0
        y = jax.random.randint(jax.random.key(1), (16,), 0, 5)
        kw = dict(key=None, temperature=0.7, margin=1.0, method="quadrature")
        err = lambda a, b: float(jnp.max(jnp.abs(a - b)))
        shard_map = lambda f, in_specs: jax.shard_map(
            f, mesh=mesh, in_specs=in_specs, out_specs=P("data")
        )

        # Sharded jit gives the single-device values (the statistics are global); so does
        # shard_map with axis_name, and without it the statistics are per shard.
        quadrature = jax.jit(lambda a, b: jaxloss.exact_loss(a, b, **kw))
        ref = quadrature(x, y)
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        ys = jax.device_put(y, NamedSharding(mesh, P("data")))
        key = jax.random.key(3)
        genz = jax.jit(lambda a, b: jaxloss.exact_loss(a, b, key=key, temperature=0.7))

        def mapped(axis_name):
            loss = lambda a, b: jaxloss.exact_loss(a, b, axis_name=axis_name, **kw)
            return jax.jit(shard_map(loss, P("data")))(xs, ys)

        per_device = np.concatenate([quadrature(x[i : i + 4], y[i : i + 4]) for i in (0, 4, 8, 12)])
        local = mapped(None)
        result = dict(
            jit=err(quadrature(xs, ys), ref),
            genz_jit=err(genz(xs, ys), genz(x, y)),
            global_stats=err(mapped("data"), ref),
            local_stats=err(local, per_device),
            local_vs_global=err(local, ref),
        )

        # The same key and the same rows on every shard: shard i draws from fold_in(key, i).
        # Unnormalized logits (temperature=None), so that a shard alone has the same statistics.
        def losses(a, b, key=None, uniforms=None, t=None, axis_name=None, **kw):
            return jaxloss.exact_loss(
                a, b, key=key, uniforms=uniforms, temperature=t, axis_name=axis_name, **kw
            )

        def value_and_grad(fn, *args, argnums=0):
            # Per-example losses and the gradient of their sum.
            total = lambda *a: (jnp.sum(fn(*a)), fn(*a))
            (_, values), grads = jax.value_and_grad(total, argnums, has_aux=True)(*args)
            return values, grads

        rows, labels = jnp.tile(x[:4] / 2, (4, 1)), jnp.tile(y[:4], 4)
        folded = shard_map(
            lambda a, b, k: losses(a, b, k, axis_name="data"), (P("data"), P("data"), P())
        )
        got_values, got_grad = jax.jit(lambda *a: value_and_grad(folded, *a))(rows, labels, key)
        single = jax.jit(lambda *a: value_and_grad(losses, *a))
        want = [single(x[:4] / 2, y[:4], jax.random.fold_in(key, i)) for i in range(4)]
        result["folded"] = max(
            err(got_values, jnp.concatenate([v for v, _ in want])),
            err(got_grad, jnp.concatenate([g for _, g in want])),
        )
        shards = got_values.reshape(4, 4)
        result["shard_spread"] = min(err(shards[i], shards[j]) for i in range(4) for j in range(i))

        # Injected uniforms shard with the batch (last axis): the single-device values and
        # gradients (logits and temperature) with global statistics.
        u = jax.random.uniform(jax.random.key(4), (2, 8, 16))
        kw = dict(truncate_classes=2, margin=1.0)
        sharded = shard_map(
            lambda a, t, b, u: losses(a, b, uniforms=u, t=t, axis_name="data", **kw),
            (P("data"), P(), P("data"), P(None, None, "data")),
        )
        t = jnp.float32(0.7)
        got = jax.jit(lambda *a: value_and_grad(sharded, *a, argnums=(0, 1)))(x, t, y, u)
        single = lambda a, t, b, u: losses(a, b, uniforms=u, t=t, **kw)
        want = jax.jit(lambda *a: value_and_grad(single, *a, argnums=(0, 1)))(x, t, y, u)
        result["uniforms"] = max(
            err(got[0], want[0]),
            *(err(g, w) / float(jnp.max(jnp.abs(w))) for g, w in zip(got[1], want[1])),
        )
        print(json.dumps(result))
        """
    )
    result = json.loads(out.splitlines()[-1])
    # Without axis_name the statistics are per shard; with it, the shards' draws differ.
    local_vs_global, spread = result.pop("local_vs_global"), result.pop("shard_spread")
    assert local_vs_global > 1e-3 and spread > 1e-3, (local_vs_global, spread)
    assert all(v < 1e-5 for v in result.values()), str(result)


def test_class_sharded_shard_map_equals_single_device():
    # Classes split over a 1 x 4 mesh, with normalized logits, a class mask and a differentiated
    # temperature: truncated Genz with a key draws the single-device uniforms (the key is not
    # folded over the class axis) and selects from each shard's candidates; untruncated Genz
    # gathers the rows. Values and gradients are the single-device ones.
    out = testing.run_on_devices(
        """
        import json
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, PartitionSpec as P
        import jaxloss

        mesh = Mesh(np.array(jax.devices()).reshape(1, 4), ("data", "model"))
        x = jax.random.normal(jax.random.key(0), (4, 16)) * 2.0
        y = jnp.array([0, 5, 10, 15])
        where = jax.random.bernoulli(jax.random.key(1), 0.8, (4, 16))
        t = jnp.float32(0.7)

        def value_and_grads(fn):
            def total(x, t):
                values = fn(x, t, y, where)
                return jnp.sum(values), values

            (_, values), grads = jax.jit(jax.value_and_grad(total, (0, 1), has_aux=True))(x, t)
            return values, *grads

        results = {}
        for name, kwargs in {"truncated": dict(truncate_classes=3), "whole": {}}.items():
            def losses(x, t, y, where, class_axis_name=None, kwargs=kwargs):
                return jaxloss.exact_loss(
                    x, y, key=jax.random.key(2), temperature=t, margin=1.5, where=where,
                    class_axis_name=class_axis_name, **kwargs,
                )

            split = jax.shard_map(
                lambda *args: losses(*args, class_axis_name="model"), mesh=mesh,
                in_specs=(P("data", "model"), P(), P("data"), P("data", "model")),
                out_specs=P("data"),
            )
            results[name] = [
                what
                for what, a, b in zip(
                    ("value", "logit gradient", "temperature gradient"),
                    value_and_grads(split), value_and_grads(losses),
                )
                if not np.allclose(a, b, rtol=1e-5, atol=1e-7)
            ]
        print(json.dumps(results))
        """
    )
    results = json.loads(out.strip().splitlines()[-1])
    assert results == {"truncated": [], "whole": []}, results


def test_axis_name_naming_the_class_axis_is_refused():
    logits = np.zeros((1, 2, 3, 4), np.float32)
    labels = np.array([0, 1, 2])
    loss = lambda x: jaxloss.exact_loss(  # noqa: E731
        x, labels, method="quadrature", axis_name=("data", "model"), class_axis_name="model"
    )
    with pytest.raises(ValueError, match=r"axis_name=\('data', 'model'\) names the class axis"):
        jax.vmap(jax.vmap(loss, axis_name="model"), axis_name="data")(logits)


def test_defaults_are_unit_temperature_on_normalized_logits():
    logits = testing.random_logits(7, (6, 5), scale=4.0).astype(np.float32)
    labels = testing.random_labels(7, (6,), 5)
    key = jax.random.key(3)
    default = jaxloss.exact_loss(logits, labels, key=key)
    explicit = jaxloss.exact_loss(
        logits, labels, key=key, temperature=1.0, normalize_logits=True, sample_size=16
    )
    np.testing.assert_array_equal(default, explicit)
    # temperature=None: the old behaviour, unit noise in raw logit units.
    raw = _quadrature_loss(logits, labels, temperature=None)
    np.testing.assert_allclose(raw, exact_numpy(logits, labels), atol=2e-6)
    assert not np.allclose(raw, _quadrature_loss(logits, labels), atol=1e-2)


def test_key_is_required_only_when_the_estimate_is_random():
    logits = np.zeros((2, 3), np.float32)
    labels = np.array([0, 1])
    with pytest.raises(ValueError, match=r"key is required.*got key=None"):
        jaxloss.exact_loss(logits, labels)
    # Deterministic cases take key=None (the default).
    # Three tied classes, or one competitor of two.
    np.testing.assert_allclose(jaxloss.exact_loss(logits, labels, method="quadrature"), 2 / 3)
    np.testing.assert_allclose(jaxloss.exact_loss(logits, labels, truncate_classes=1), 1 / 2)
    assert jaxloss.exact_loss(logits[:, :2], labels).shape == (2,)


@pytest.mark.parametrize("truncate_classes", [None, 2])
def test_injected_uniforms_replace_the_key(truncate_classes):
    logits = testing.random_logits(8, (3, 2, 4), dtype=np.float32)
    labels = testing.random_labels(8, (3, 2), 4)
    key = jax.random.key(9)
    # The key's draw: (k, N, *labels.shape), k the number of integrated competitors.
    u = jax.random.uniform(key, (truncate_classes or 3, 16, 3, 2))
    loss = jax.jit(
        lambda key, u: jaxloss.exact_loss(
            logits, labels, key=key, uniforms=u, truncate_classes=truncate_classes
        )
    )
    np.testing.assert_array_equal(loss(None, u), loss(key, None))
    np.testing.assert_array_equal(loss(jax.random.key(10), u), loss(key, None))
    with pytest.raises(ValueError, match="uniforms must have shape"):
        loss(None, u[:, :, :2])


@pytest.mark.parametrize("temperature", [1e-30, 1e-20, 1e-6])
def test_tiny_temperatures_give_finite_gradients(temperature):
    logits = testing.random_logits(8, (4, 5)).astype(np.float32)
    logits[0] = 0.3  # ties: differences of exactly 0 keep a gradient at any temperature
    labels = testing.random_labels(8, (4,), 5)

    def mean_loss(x, t):
        return jnp.mean(
            jaxloss.exact_loss(x, labels, key=jax.random.key(0), temperature=t, margin=1.0)
        )

    value, (grad_x, grad_t) = jax.jit(jax.value_and_grad(mean_loss, argnums=(0, 1)))(
        logits, jnp.float32(temperature)
    )
    assert np.isfinite(value) and np.all(np.isfinite(grad_x)) and np.isfinite(grad_t)
    with pytest.raises(ValueError, match="temperature must be in"):
        jaxloss.exact_loss(logits, labels, key=jax.random.key(0), temperature=1e-45)


@pytest.mark.parametrize("method", ["genz", "quadrature"])
def test_minus_inf_equals_where_with_a_differentiated_temperature(method):
    logits = testing.random_logits(9, (5, 6)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4])
    masked = np.zeros((5, 6), bool)
    masked[[0, 1, 3], [5, 0, 1]] = True

    def value_and_grad(x, where=None):
        def mean_loss(x, t):
            losses = jaxloss.exact_loss(
                x,
                labels,
                key=jax.random.key(1),
                temperature=t,
                margin=2.0,
                where=where,
                method=method,
            )
            return jnp.mean(losses)

        return jax.value_and_grad(mean_loss, argnums=(0, 1))(x, 0.7)

    value_inf, (grad_inf, t_inf) = value_and_grad(np.where(masked, -np.inf, logits))
    value_where, (grad_where, t_where) = value_and_grad(logits, where=~masked)
    np.testing.assert_allclose(value_inf, value_where, rtol=1e-6)
    np.testing.assert_allclose(grad_inf, grad_where, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(t_inf, t_where, rtol=1e-5)
    np.testing.assert_array_equal(grad_inf[masked], 0.0)


@pytest.mark.parametrize("truncate_classes", [None, 2])
def test_nan_row_does_not_reach_the_other_rows_through_the_statistics(truncate_classes):
    logits = testing.random_logits(10, (4, 6)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    poisoned = logits.copy()
    poisoned[2, 4] = np.nan

    def losses(x):
        return jaxloss.exact_loss(
            x, labels, key=jax.random.key(2), truncate_classes=truncate_classes
        )

    value = losses(poisoned)
    grad = jax.grad(lambda x: jnp.sum(losses(x)))(poisoned)
    assert np.isnan(value[2])
    rest = np.array([0, 1, 3])
    assert np.all(np.isfinite(value[rest])) and np.all(np.isfinite(grad[rest]))
    # NaN stays out of the statistics: the other rows see the batch without that entry.
    where = np.ones((4, 6), bool)
    where[2, 4] = False
    masked = jaxloss.exact_loss(
        logits, labels, key=jax.random.key(2), truncate_classes=truncate_classes, where=where
    )
    np.testing.assert_allclose(value[rest], masked[rest], rtol=1e-6)


def test_forward_mode_names_the_loss():
    logits = testing.random_logits(11, (2, 4)).astype(np.float32)
    labels = np.array([0, 3])
    for kwargs in [{"key": jax.random.key(0)}, {"method": "quadrature"}]:
        with pytest.raises(TypeError, match=r"jaxloss\.exact_loss supports reverse-mode"):
            jax.jacfwd(lambda x, kw=kwargs: jaxloss.exact_loss(x, labels, **kw))(logits)


def test_old_keyword_truncate_is_gone():
    with pytest.raises(TypeError, match="truncate"):
        jaxloss.ops.gaussian_orthant_probability(np.zeros((1, 3)), truncate=1)
