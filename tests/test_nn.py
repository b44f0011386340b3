"""Tests of jaxloss.nn.CosineClassifier."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxloss
from tests import testing


def numpy_cosines(x, kernel):
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return x @ (kernel / np.linalg.norm(kernel, axis=0, keepdims=True))


def test_scores_are_cosines_in_unit_interval():
    head = jaxloss.nn.CosineClassifier(6, 4, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.linalg.norm(head.kernel[...], axis=0), 1.0, rtol=1e-6)
    x = testing.random_logits(0, (2, 3, 6), dtype=np.float32)
    scores = head(x)
    chex.assert_shape(scores, (2, 3, 4))
    np.testing.assert_allclose(scores, numpy_cosines(x, head.kernel[...]), atol=1e-6)
    np.testing.assert_allclose(head(7.5 * x), scores, atol=1e-6)
    # A feature vector along a class's weight scores exactly 1 for that class.
    np.testing.assert_allclose(head(2.0 * head.kernel[...][:, 2])[2], 1.0, rtol=1e-6)
    assert np.all(np.abs(head(jnp.asarray(x, jnp.bfloat16))) <= 1.0)


def test_gradients_are_finite_and_match_finite_differences():
    x = testing.random_logits(1, (4, 5))
    with jax.enable_x64(True):
        head = jaxloss.nn.CosineClassifier(5, 3, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
        graphdef, state = nnx.split(head)

        @jax.jit
        def scores(x, kernel):
            return nnx.merge(graphdef, jax.tree.map(lambda _: kernel, state))(x)

        # A kernel whose columns are not unit, so that the gradient of the norm matters.
        kernel = np.asarray(head.kernel[...]) * np.array([1.7, 0.4, 3.0])
        testing.check_grads_f64(scores, (x, kernel))
    # The zero vector has no direction: its scores and gradients are 0, not NaN.
    head = jaxloss.nn.CosineClassifier(5, 3, rngs=nnx.Rngs(1))

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x)))

    grads = nnx.grad(loss, argnums=(0, 1))(head, jnp.zeros((2, 5)))
    chex.assert_tree_all_finite(grads)
    np.testing.assert_array_equal(head(jnp.zeros((2, 5))), 0.0)


def test_trains_under_nnx_jit_with_a_margin_loss():
    head = jaxloss.nn.CosineClassifier(8, 3, rngs=nnx.Rngs(2))
    x = testing.random_logits(2, (30, 8), dtype=np.float32)
    labels = np.argmax(x[:, :3], axis=1)
    optimizer = nnx.Optimizer(head, optax.sgd(0.5), wrt=nnx.Param)

    @nnx.jit
    def step(head, optimizer):
        def loss(head):
            return jnp.mean(jaxloss.ldam_loss(head(x), labels, class_counts=np.ones(3), max_m=0.2))

        value, grads = nnx.value_and_grad(loss)(head)
        optimizer.update(head, grads)
        return value

    first = step(head, optimizer)
    for _ in range(20):
        last = step(head, optimizer)
    assert last < first
