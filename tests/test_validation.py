"""jaxloss._validation: the single place that checks inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jaxloss import _validation


def test_prepare_moves_the_class_axis_last_and_upcasts_16_bit():
    z = jnp.zeros((5, 2, 3), jnp.bfloat16)
    prepared = _validation.prepare(z, jnp.zeros((2, 3), jnp.int32), axis=0)
    assert prepared.logits.shape == (2, 3, 5)
    assert prepared.logits.dtype == jnp.float32
    assert prepared.out_dtype == jnp.bfloat16
    assert prepared.num_classes == 5


def test_prepare_keeps_float64_under_x64():
    with jax.enable_x64(True):
        prepared = _validation.prepare(jnp.zeros((2, 3), jnp.float64), jnp.zeros(2, jnp.int32))
    assert prepared.logits.dtype == jnp.float64


def test_prepare_broadcasts_and_moves_the_class_mask():
    where = np.array([True, False, True])
    prepared = _validation.prepare(
        jnp.zeros((3, 4)), jnp.zeros(4, jnp.int32), axis=0, where=where[:, None]
    )
    assert prepared.where.shape == (4, 3)
    np.testing.assert_array_equal(prepared.where[0], where)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(logits=jnp.zeros(3)), ValueError, None),
        (dict(logits=jnp.zeros((2, 3), jnp.int32)), TypeError, "floating-point"),
        (dict(logits=jnp.float32(1.0)), ValueError, "scalar"),
        (dict(labels=jnp.zeros(2)), TypeError, "integer class indices"),
        (dict(labels=jnp.zeros((3,), jnp.int32)), ValueError, r"need labels of shape \(2,\)"),
        (dict(axis=-3), ValueError, "axis=-3 is out of range"),
        (dict(where=jnp.ones((2, 3), jnp.int32)), TypeError, "boolean mask"),
        (dict(min_classes=4), ValueError, "needs at least 4"),
    ],
)
def test_prepare_errors(kwargs, error, message):
    args = dict(logits=jnp.zeros((2, 3)), labels=jnp.zeros(2, jnp.int32))
    args.update(kwargs)
    if message is None:  # 1-D logits with 2-D-style labels: labels must be a scalar.
        with pytest.raises(ValueError, match=r"labels of shape \(\)"):
            _validation.prepare(args.pop("logits"), **args)
        return
    with pytest.raises(error, match=message):
        _validation.prepare(args.pop("logits"), **args)


def test_check_in_range_messages_name_parameter_value_and_interval():
    with pytest.raises(ValueError, match=r"tau must be in \(0, inf\], got 0"):
        _validation.check_in_range("tau", 0, lower=0, lower_open=True)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got nan"):
        _validation.check_in_range("p", float("nan"), lower=0, upper=1, upper_open=True)
    _validation.check_in_range("p", 0.5, lower=0, upper=1)


def test_check_in_range_skips_traced_values():
    jax.jit(lambda t: _validation.check_in_range("t", t, lower=0.0) or t)(-1.0)


def test_check_integer_rejects_floats_and_bools():
    assert _validation.check_integer("k", np.int64(3), lower=1) == 3
    with pytest.raises(TypeError, match="k must be a Python int"):
        _validation.check_integer("k", 2.0)
    with pytest.raises(TypeError):
        _validation.check_integer("k", True)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\], got 6"):
        _validation.check_integer("k", 6, lower=1, upper=5)


def test_check_class_vector():
    with pytest.raises(ValueError, match="counts is required"):
        _validation.check_class_vector("counts", None, 3)
    with pytest.raises(ValueError, match=r"counts must be in \[0, inf\] and finite, got \[-1.0\]"):
        _validation.check_class_vector("counts", [1.0, -1.0, 2.0], 3, positive=False)
    for bad in (np.inf, np.nan, 0.0, -3.0):
        with pytest.raises(ValueError, match=r"class_counts must be in \(0, inf\] and finite"):
            _validation.check_class_vector("class_counts", [1.0, bad, 2.0], 3)
    np.testing.assert_array_equal(_validation.check_class_vector("counts", [1, 2, 3], 3), [1, 2, 3])


def test_traced_range_checks_raise_under_checkify():
    def scaled(value):
        _validation.check_in_range("tau", value, lower=0.0, lower_open=True)
        return 2.0 * value

    # Plain jit: the traced value is not checked (and costs nothing).
    assert float(jax.jit(scaled)(-1.0)) == -2.0
    error, _ = checkify.checkify(jax.jit(scaled))(jnp.float32(-1.0))
    assert "tau must be in (0.0, inf], got -1.0" in error.get()
    error, _ = checkify.checkify(jax.jit(scaled))(jnp.float32(1.0))
    assert error.get() is None


def test_tuple_axis_flattens_the_class_axes_like_optax():
    logits = jnp.arange(24.0).reshape(2, 3, 4)
    prepared = _validation.prepare(logits, jnp.array([1, 2, 3]), axis=(0, 2))
    assert prepared.logits.shape == (3, 8) and prepared.num_classes == 8
    np.testing.assert_array_equal(prepared.logits[1], np.asarray(logits)[:, 1, :].ravel())
    with pytest.raises(ValueError, match="names the same axis twice"):
        _validation.prepare(logits, jnp.zeros(3, jnp.int32), axis=(0, -3))
    with pytest.raises(TypeError, match="axis must be an int or a non-empty tuple"):
        _validation.prepare(logits, jnp.zeros(3, jnp.int32), axis=[0, 2])
    with pytest.raises(ValueError, match=r"axis=\(0, 2\): this function takes one class axis"):
        _validation.prepare(logits, jnp.zeros(3, jnp.int32), axis=(0, 2), tuple_axis=False)


def test_per_example_where_masks_every_class_of_the_example():
    prepared = _validation.prepare(
        jnp.zeros((2, 3)), jnp.array([0, 1]), where=jnp.array([True, False])
    )
    np.testing.assert_array_equal(prepared.where, [[True] * 3, [False] * 3])


def test_traced_values_checked_traces_without_the_runtime_checks():
    def make_step():  # a fresh function each time, as each training run builds its step
        def step(values):  # a population's values, vmapped as in the training step
            def one(value):
                _validation.check_in_range("tau", value, lower=0.0, lower_open=True)
                return 2.0 * value

            return jax.vmap(one)(values)

        return step

    def make_vouched():
        step = make_step()

        def vouched(values):
            with _validation.traced_values_checked():
                return step(values)

        return vouched

    values = jnp.array([1.0, -1.0])
    # Under vmap each trace of the check holds a new process-wide error id, so two traces of the
    # same step lower to different programs (and never share a compiled one)...
    assert len({jax.jit(make_step()).lower(values).as_text() for _ in range(2)}) == 2
    # ...unless the caller vouches for the values: then there is no check and one program.
    assert len({jax.jit(make_vouched()).lower(values).as_text() for _ in range(2)}) == 1
    error, out = checkify.checkify(jax.jit(make_vouched()))(values)
    assert error.get() is None
    np.testing.assert_array_equal(out, [2.0, -2.0])
    # Outside the context the check is back.
    error, _ = checkify.checkify(jax.jit(make_step()))(values)
    assert "tau must be in (0.0, inf]" in error.get()
