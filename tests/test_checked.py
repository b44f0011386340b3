"""jaxloss.checked: run-time errors for out-of-range labels and NaN inputs."""

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


def test_unchecked_out_of_range_label_does_not_raise():
    # What `checked` protects against: the plain loss silently returns a number.
    out = jaxloss.label_relaxation_loss(jnp.zeros((1, 3)), jnp.array([7]))
    assert out.shape == (1,)


def test_nan_logits_raise():
    z = jnp.array([[0.0, jnp.nan, 1.0]])
    with pytest.raises(checkify.JaxRuntimeError, match="logits contain NaN or Inf"):
        SAFE_LR(z, jnp.array([0]))


def test_class_axis_is_respected():
    safe = jaxloss.checked(jaxloss.softmax_focal_loss)
    with pytest.raises(checkify.JaxRuntimeError, match=r"\[0, 2\)"):
        safe(jnp.zeros((2, 4)), jnp.array([0, 2, 1, 1]), axis=0)
    out = safe(jnp.zeros((2, 4)), jnp.array([0, 1, 1, 0]), axis=0)
    np.testing.assert_allclose(out, np.full(4, 0.25 * np.log(2.0)), rtol=1e-6)
