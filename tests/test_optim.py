"""Tests of the EXACT recipe's optimization pieces."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxloss import optim


def test_gradient_normalizer_matches_reference_recurrence():
    rng = np.random.default_rng(0)
    grads = [
        {"w": rng.normal(size=(3, 2)) * scale, "b": rng.normal(size=2) * scale}
        for scale in (1.0, 10.0, 0.001, 0.0001, 3.0)
    ]
    tx = optim.gradient_normalizer(clip=0.01, momentum=0.9)
    state = tx.init(grads[0])
    update = jax.jit(tx.update)
    average = None
    for g in grads:
        norm = math.sqrt(sum(np.sum(np.square(v)) for v in g.values()))
        average = norm if average is None else 0.9 * average + 0.1 * norm
        updates, state = update(jax.tree.map(jnp.float32, g), state)
        for name in g:
            np.testing.assert_allclose(updates[name], g[name] / max(average, 0.01), rtol=1e-5)
    np.testing.assert_allclose(state.average_norm, average, rtol=1e-5)


def test_gradient_normalizer_chains_with_sgd():
    tx = optax.chain(optim.gradient_normalizer(), optax.sgd(0.1))
    params = {"w": jnp.ones(4)}
    state = tx.init(params)
    updates, _ = tx.update({"w": jnp.full(4, 100.0)}, state, params)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.5, rtol=1e-6)


def test_temperature_schedule_is_geometric_per_epoch():
    schedule = optim.temperature_schedule(16, 500)
    epochs = np.arange(16)
    got = np.array([schedule(e * 500 + 499) for e in epochs])
    np.testing.assert_allclose(got, 10.0 * (0.01 / 10.0) ** (epochs / 16), rtol=1e-5)
    assert float(schedule(0)) == pytest.approx(10.0)


def test_variance_schedule_matches_reference_formula():
    schedule = jax.jit(optim.variance_schedule(25, 3, min_variance=0.0027184))
    epochs = np.arange(25)
    want = np.exp(np.log(100.0) + (np.log(0.0027184) - np.log(100.0)) * epochs / 25)
    np.testing.assert_allclose([schedule(3 * e + 2) for e in epochs], want, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="clip"):
        optim.gradient_normalizer(clip=0.0)
    with pytest.raises(ValueError, match="momentum"):
        optim.gradient_normalizer(momentum=1.0)
    with pytest.raises(ValueError, match="final_temperature"):
        optim.temperature_schedule(10, final_temperature=-1.0)
    with pytest.raises(TypeError, match="num_epochs"):
        optim.variance_schedule(2.5)
