"""poly1_loss against a float64 NumPy oracle, optax's cross-entropy at epsilon = 0, finite
differences and float32 extremes (the conventions every loss keeps are in test_conventions.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp

import jaxloss
from tests import testing


def ref_poly1(z, y, epsilon):
    log_p = z - logsumexp(z, axis=-1, keepdims=True)
    log_py = np.take_along_axis(log_p, y[..., None], axis=-1)[..., 0]
    return -log_py + epsilon * (1.0 - np.exp(log_py))


@pytest.mark.parametrize("epsilon", [-1.0, 0.0, 1.0, 3.5])
def test_matches_the_float64_oracle(epsilon):
    z = testing.random_logits(0, (6, 3, 5))
    y = testing.random_labels(0, (6, 3), 5)
    testing.assert_matches_oracle(
        lambda z, y, epsilon: jaxloss.poly1_loss(z, y, epsilon=epsilon), ref_poly1, z, y,
        epsilon=epsilon,
    )  # fmt: skip


def test_epsilon_zero_is_optax_cross_entropy():
    z = jnp.asarray(testing.random_logits(1, (8, 7)), jnp.float32)
    y = jnp.asarray(testing.random_labels(1, (8,), 7))
    where = jnp.asarray(np.random.default_rng(1).random((8, 7)) > 0.3)
    np.testing.assert_allclose(
        jaxloss.poly1_loss(z, y, epsilon=0.0, where=where),
        optax.softmax_cross_entropy_with_integer_labels(z, y, where=where),
        rtol=1e-6,
    )


def test_gradient_matches_finite_differences():
    z = testing.random_logits(2, (4, 6))
    y = jnp.asarray(testing.random_labels(2, (4,), 6))
    testing.check_grads_f64(lambda z: jaxloss.poly1_loss(z, y, epsilon=2.0), (z,), order=2)


def test_the_polynomial_term_keeps_precision_when_p_y_rounds_to_one():
    # p_y = 1 - 2e-20 rounds to 1 in float32, yet 1 - p_y is exact as a sum of the others.
    z = jnp.array([[50.0, 0.0, 0.0], [1e4 + 50.0, 1e4, 1e4]], jnp.float32)
    y = jnp.array([0, 0])
    term = jaxloss.poly1_loss(z, y, epsilon=1.0) - jaxloss.poly1_loss(z, y, epsilon=0.0)
    np.testing.assert_allclose(term, 2 * np.exp(-50.0) / (1 + 2 * np.exp(-50.0)), rtol=1e-5)
    grad = jax.grad(lambda z: jaxloss.poly1_loss(z, y, epsilon=1.0).sum())(z)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, 1:] > 0)


def test_bfloat16_in_bfloat16_out_and_bad_epsilon():
    z = jnp.zeros((2, 4), jnp.bfloat16)
    assert jaxloss.poly1_loss(z, jnp.array([0, 1])).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"epsilon must be in \[-1.0, inf\] and finite, got -2"):
        jaxloss.poly1_loss(z, jnp.array([0, 1]), epsilon=-2.0)
