"""The generalized cross-entropy against its closed form, its limits and its paper's bounds.

Its conventions (masks, non-finite logits, traced q, empty batches, class-sharded and data-parallel
forms) are checked from its spec by the registry-driven tests, like every loss.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxloss
from tests import testing

C = 6


def ref_gce(z, y, q):
    """(1 - p_y^q) / q in float64 NumPy, p the softmax of z: -expm1(q log p_y), with
    log p_y = -log1p(sum over k != y of e^(z_k - z_y)), exact also where p_y rounds to 1."""
    z = np.asarray(z, np.float64)
    y = np.asarray(y)
    gaps = np.exp(z - np.take_along_axis(z, y[..., None], -1))
    others = np.where(np.arange(z.shape[-1]) == y[..., None], 0.0, gaps).sum(-1)
    return -np.expm1(-q * np.log1p(others)) / q


@pytest.mark.parametrize("q", [0.1, 0.7, 1.0])
def test_matches_the_closed_form_in_float64(q):
    z = testing.random_logits(0, (5, C))
    y = testing.random_labels(0, (5,), C)
    testing.assert_matches_oracle(jaxloss.generalized_cross_entropy_loss, ref_gce, z, y, q=q)


def test_float32_keeps_relative_precision_where_p_y_rounds_to_one():
    z = np.array([[40.0, 0.0, 0.0], [17.0, 1.0, -3.0]], np.float32)
    y = np.array([0, 0])
    got = jaxloss.generalized_cross_entropy_loss(jnp.asarray(z), jnp.asarray(y), q=0.7)
    # 1 - p_y^q = -expm1(q log p_y) ~ 2 e^-40 = 8.5e-18 (row 0), where 1 - p_y^q would be 0.
    np.testing.assert_allclose(got, ref_gce(z, y, 0.7), rtol=1e-5)
    assert float(got[0]) > 0


def test_limits_are_cross_entropy_and_one_minus_p_y():
    z = jnp.asarray(testing.random_logits(1, (6, C), dtype=np.float32))
    y = jnp.asarray(testing.random_labels(1, (6,), C))
    ce = optax.softmax_cross_entropy_with_integer_labels(z, y)
    np.testing.assert_allclose(jaxloss.generalized_cross_entropy_loss(z, y, q=1e-4), ce, rtol=1e-3)
    p_y = jnp.take_along_axis(jax.nn.softmax(z), y[:, None], -1)[:, 0]
    np.testing.assert_allclose(
        jaxloss.generalized_cross_entropy_loss(z, y, q=1.0), 1 - p_y, rtol=1e-5
    )


@pytest.mark.parametrize("q", [0.3, 0.7, 1.0])
def test_sum_over_labels_lies_within_the_papers_bounds(q):
    # Zhang & Sabuncu, Lemma 1: (C - C^(1-q)) / q <= sum_j L_q(f(x), e_j) <= (C - 1) / q, the
    # lower bound reached by the uniform prediction.
    z = jnp.asarray(testing.random_logits(2, (50, C), scale=4.0))
    every_label = jnp.stack(
        [jaxloss.generalized_cross_entropy_loss(z, jnp.full(50, j), q=q) for j in range(C)]
    ).sum(0)
    low, high = (C - C ** (1 - q)) / q, (C - 1) / q
    assert np.all(every_label >= low - 1e-5) and np.all(every_label <= high + 1e-5)
    uniform = jaxloss.generalized_cross_entropy_loss(jnp.zeros((1, C)), jnp.zeros(1, int), q=q)
    np.testing.assert_allclose(C * uniform, low, rtol=1e-6)


def test_gradient_is_cross_entropys_weighted_by_p_y_to_the_q():
    # The paper's gradient: p_y^q times that of -log p_y, i.e. p_y^q (softmax(z) - e_y).
    z = testing.random_logits(3, (4, C))
    y = testing.random_labels(3, (4,), C)
    testing.check_grads_f64(
        lambda x: jaxloss.generalized_cross_entropy_loss(x, jnp.asarray(y), q=0.7), (z,)
    )
    with jax.enable_x64(True):
        grad = jax.grad(
            lambda x: jaxloss.generalized_cross_entropy_loss(x, jnp.asarray(y), q=0.7).sum()
        )(jnp.asarray(z))
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p_y = p[np.arange(4), y]
    want = p_y[:, None] ** 0.7 * (p - np.eye(C)[y])
    np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5, np.nan])
def test_q_outside_zero_one_is_refused(q):
    with pytest.raises(ValueError, match=r"q must be in \(0.0, 1.0\]"):
        jaxloss.generalized_cross_entropy_loss(jnp.zeros((1, C)), jnp.zeros(1, int), q=q)
