"""jaxloss.checked: run-time errors for out-of-range labels, NaN inputs and outputs, traced ranges."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxloss

SAFE_LR = jaxloss.checked(jaxloss.label_relaxation_loss)


def test_valid_inputs_give_the_unwrapped_result():
    z = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
    y = jnp.array([0, 1, 2, 1])
    np.testing.assert_allclose(
        SAFE_LR(z, y, alpha=0.1), jaxloss.label_relaxation_loss(z, y, alpha=0.1)
    )


@pytest.mark.parametrize("bad_label", [3, -1])
def test_out_of_range_labels_raise_and_name_the_label(bad_label):
    y = jnp.array([0, bad_label, 1])
    with pytest.raises(
        checkify.JaxRuntimeError, match=rf"labels must be in \[0, 3\); got a label of {bad_label}"
    ):
        SAFE_LR(jnp.zeros((3, 3)), y)


def test_unchecked_out_of_range_label_does_not_raise_but_gives_nan():
    # What `checked` names: the plain loss only makes the example NaN.
    out = jaxloss.label_relaxation_loss(jnp.zeros((2, 3)), jnp.array([7, -1]))
    assert out.shape == (2,) and np.isnan(out).all()


def test_nan_logits_raise():
    z = jnp.array([[0.0, jnp.nan, 1.0]])
    with pytest.raises(checkify.JaxRuntimeError, match=r"logits contain NaN or \+inf"):
        SAFE_LR(z, jnp.array([0]))


def test_minus_inf_is_a_legal_masked_class_and_plus_inf_raises():
    safe = jaxloss.checked(jaxloss.exact_loss)
    z = jnp.array([[0.0, -jnp.inf, 1.0], [0.5, 0.0, -1.0]])
    y = jnp.array([0, 1])
    np.testing.assert_allclose(
        safe(z, y, method="quadrature"), jaxloss.exact_loss(z, y, method="quadrature")
    )
    with pytest.raises(checkify.JaxRuntimeError, match=r"\+inf"):
        safe(z.at[1, 2].set(jnp.inf), y, method="quadrature")


def test_nan_output_raises():
    safe = jaxloss.checked(lambda logits, labels: jnp.log(logits[:, 0] - 1.0))
    with pytest.raises(checkify.JaxRuntimeError, match="the loss is NaN"):
        safe(jnp.zeros((2, 3)), jnp.array([0, 1]))


@pytest.mark.parametrize(
    "loss, kwargs",
    [
        (jaxloss.exact_loss, {"key": jax.random.key(0), "temperature": 0.7}),
        (jaxloss.label_relaxation_loss, {"alpha": 0.2}),
    ],
)
def test_gradient_through_checked_equals_the_plain_gradient(loss, kwargs):
    z = jnp.asarray(np.random.default_rng(1).standard_normal((4, 5)), jnp.float32)
    y = jnp.array([0, 4, 2, 1])

    def total(z, fn):
        return jnp.sum(fn(z, y, **kwargs))

    want = jax.grad(total)(z, loss)
    np.testing.assert_array_equal(jax.grad(total)(z, jaxloss.checked(loss)), want)
    checked_grad = jax.jit(
        checkify.checkify(
            lambda z: jax.grad(total)(z, jaxloss.checked(loss)), errors=checkify.user_checks
        )
    )
    error, got = checked_grad(z)
    assert error.get() is None
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # The checks still run under grad.
    with pytest.raises(checkify.JaxRuntimeError, match="labels must be in"):
        jax.grad(lambda z: jnp.sum(jaxloss.checked(loss)(z, y.at[0].set(9), **kwargs)))(z)


def test_traced_hyperparameters_are_range_checked():
    z, y = jnp.zeros((2, 3)), jnp.array([0, 2])
    # vmap over a population: the wrapper raises eagerly, naming the bad value.
    with pytest.raises(checkify.JaxRuntimeError, match=r"alpha must be in \[0.0, 1.0\), got"):
        jax.vmap(lambda a: SAFE_LR(z, y, alpha=a))(jnp.array([0.1, 2.0]))
    assert jax.vmap(lambda a: SAFE_LR(z, y, alpha=a))(jnp.array([0.1, 0.5])).shape == (2, 2)
    # A jitted step: functionalized by checkify, thrown outside.
    step = jax.jit(checkify.checkify(lambda a: SAFE_LR(z, y, alpha=a), errors=checkify.user_checks))
    error, _ = step(2.0)
    with pytest.raises(checkify.JaxRuntimeError, match="alpha must be in"):
        error.throw()
    assert step(0.5)[0].get() is None
    # Plain jit cannot raise from compiled code: JAX says to functionalize with checkify.
    with pytest.raises(ValueError, match="checkify"):
        jax.jit(lambda a: SAFE_LR(z, y, alpha=a))(0.5)


def _compile_seconds(fn, *args):
    start = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - start


def test_checks_cost_about_one_more_compile_of_the_loss():
    # checkify's nan_checks instrumented every primitive of the Genz estimator (30 s here).
    z = jnp.asarray(np.random.default_rng(2).standard_normal((4, 10)), jnp.float32)
    y = jnp.arange(4)
    key = jax.random.key(0)
    plain = _compile_seconds(lambda z: jaxloss.exact_loss(z, y, key=key), z)
    safe = jaxloss.checked(jaxloss.exact_loss)
    wrapped = _compile_seconds(
        checkify.checkify(lambda z: safe(z, y, key=key), errors=checkify.user_checks), z
    )
    assert wrapped < 5 * plain + 2.0, (wrapped, plain)


def test_class_axis_is_respected():
    safe = jaxloss.checked(jaxloss.softmax_focal_loss)
    with pytest.raises(checkify.JaxRuntimeError, match=r"\[0, 2\)"):
        safe(jnp.zeros((2, 4)), jnp.array([0, 2, 1, 1]), axis=0)
    out = safe(jnp.zeros((2, 4)), jnp.array([0, 1, 1, 0]), axis=0)
    np.testing.assert_allclose(out, np.full(4, 0.25 * np.log(2.0)), rtol=1e-6)
