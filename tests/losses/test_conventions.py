"""The conventions every registered loss keeps, checked from its spec (optax's semantics at the edges).

- ``where``: an all-False row gives 0 and gradient 0; a masked label gives finite values.
- a ``-inf`` logit is a masked class; a NaN logit makes the row NaN; a ``+inf`` logit gives the
  loss's limit or a non-finite value, never a wrong finite number.
- continuous hyperparameters may be traced: vmap over values equals a loop, and jit takes them.
- custom-VJP losses name themselves when forward mode is asked for; the others support it.
- ``class_axis_name``: every loss takes it; outside a ``shard_map`` naming it, it is refused by
  name before any work, and None is the whole row. (Its values: tests/losses/test_class_sharded.py.)
"""

import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from tests import testing

NAMES = jaxloss.available_losses()
BATCH, CLASSES = 4, 8


def _inputs(seed=0):
    logits = jnp.asarray(testing.random_logits(seed, (BATCH, CLASSES), scale=2.0), jnp.float32)
    labels = jnp.asarray(testing.random_labels(seed, (BATCH,), CLASSES))
    return logits, labels


def _value_and_grad(call, logits, labels, **kwargs):
    return jax.value_and_grad(lambda z: jnp.sum(call(z, labels, **kwargs)))(logits), call(
        logits, labels, **kwargs
    )


@pytest.fixture(params=NAMES)
def spec(request):
    return jaxloss.loss_spec(request.param)


def test_all_masked_row_gives_zero_and_zero_gradient(spec):
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs()
    where = jnp.ones((BATCH, CLASSES), bool).at[0].set(False)
    (_, grad), value = _value_and_grad(call, logits, labels, where=where)
    assert float(value[0]) == 0.0
    np.testing.assert_array_equal(grad[0], 0.0)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    # A per-example mask of the labels' shape (optax) excludes the same example.
    per_example = call(logits, labels, where=jnp.arange(BATCH) != 0)
    np.testing.assert_allclose(per_example, value, rtol=1e-6)


def test_masked_label_gives_finite_value_and_gradient(spec):
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs(1)
    where = jnp.arange(CLASSES) != labels[:, None]
    (_, grad), value = _value_and_grad(call, logits, labels, where=where)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))


def test_minus_inf_logit_is_a_masked_class(spec):
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs(2)
    # One non-label class per row, a different one in each row.
    masked_class = (labels + 1 + jnp.arange(BATCH)) % CLASSES
    masked_class = jnp.where(masked_class == labels, (labels + 1) % CLASSES, masked_class)
    is_masked = jnp.arange(CLASSES) == masked_class[:, None]
    (_, grad_inf), value_inf = _value_and_grad(call, jnp.where(is_masked, -jnp.inf, logits), labels)
    (_, grad_where), value_where = _value_and_grad(call, logits, labels, where=~is_masked)
    np.testing.assert_allclose(value_inf, value_where, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_inf, grad_where, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(grad_inf)[np.asarray(is_masked)], 0.0)


def test_nan_logit_makes_its_row_nan(spec):
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs(3)
    value = call(logits.at[1, 3].set(jnp.nan), labels)
    assert np.isnan(value[1])
    assert np.all(np.isfinite(np.delete(np.asarray(value), 1))), value


@pytest.mark.parametrize("at_label", [True, False])
def test_plus_inf_logit_gives_the_limit_or_a_non_finite_value(spec, at_label):
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs(4)
    column = labels[0] if at_label else (labels[0] + 1) % CLASSES
    value_inf = float(call(logits.at[0, column].set(jnp.inf), labels)[0])
    if not np.isfinite(value_inf):
        return
    # A finite answer must be the limit: what a huge finite logit gives.
    large = [float(call(logits.at[0, column].set(v), labels)[0]) for v in (1e5, 1e6)]
    np.testing.assert_allclose(large[0], large[1], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(value_inf, large[1], rtol=1e-3, atol=1e-4)


def test_numpy_float64_logits_give_float32_without_a_warning(spec):
    # As jnp.asarray and optax take them without x64: no warning on every call.
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs()
    wide = np.asarray(logits, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = call(wide, np.asarray(labels))
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, call(logits, labels), rtol=1e-6)


def test_vmap_over_continuous_hyperparameters_equals_a_loop(spec):
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs(5)
    if spec.needs_class_counts:
        ranges = {**spec.ranges, "class_counts": None}
    else:
        ranges = dict(spec.ranges)
    assert ranges or spec.name in ("cross_entropy",), "every loss but CE has a hyperparameter"
    for name, interval in ranges.items():
        if interval is None:  # class counts: a batch of count vectors
            values = jnp.asarray([np.arange(1.0, CLASSES + 1) * m for m in (1, 7, 50)])
            values = values.at[1].set(values[1][::-1])
        else:
            values = jnp.asarray(interval.grid(3), jnp.float32)
        mapped = jax.vmap(lambda v, name=name: call(logits, labels, **{name: v}))(values)
        jitted = jax.jit(lambda v, name=name: call(logits, labels, **{name: v}))
        for i, v in enumerate(values):
            want = call(logits, labels, **{name: np.asarray(v)})
            np.testing.assert_allclose(mapped[i], want, rtol=2e-5, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(jitted(v), want, rtol=2e-5, atol=1e-6, err_msg=name)


def test_forward_mode_is_supported_or_refused_by_name(spec):
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs(6)

    def total(z):
        return jnp.sum(call(z, labels))

    if spec.reverse_mode_only:
        with pytest.raises(TypeError, match=rf"jaxloss\.{spec.fn.__name__} supports reverse-mode"):
            jax.jacfwd(total)(logits)
        return
    np.testing.assert_allclose(
        jax.jacfwd(total)(logits), jax.grad(total)(logits), rtol=1e-5, atol=1e-6
    )


def test_tuple_axis_flattens_classes_or_is_refused_by_name(spec):
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs(7)
    # Classes laid out on axes (0, 2) of a (2, batch, 4) array; labels index them flat.
    split = jnp.transpose(logits.reshape(BATCH, 2, CLASSES // 2), (1, 0, 2))
    try:
        got = call(split, labels, axis=(0, 2))
    except ValueError as error:
        assert "axis" in str(error)
        return
    np.testing.assert_allclose(got, call(logits, labels), rtol=1e-6, atol=1e-7)


def test_class_axis_name_is_refused_outside_a_mapped_axis(spec):
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs(9)
    np.testing.assert_array_equal(call(logits, labels, class_axis_name=None), call(logits, labels))
    with pytest.raises(ValueError, match="class_axis_name='model' is not an axis"):
        call(logits, labels, class_axis_name="model")
    with pytest.raises(TypeError, match="class_axis_name must be a mesh axis name"):
        call(logits, labels, class_axis_name=3)


def test_bad_class_counts_are_refused_by_name(spec):
    if not spec.needs_class_counts:
        pytest.skip("the loss takes no class counts")
    call = testing.spec_call(spec, num_classes=CLASSES)
    logits, labels = _inputs(8)
    for bad in (np.inf, np.nan, 0.0, -1.0):
        counts = np.arange(1.0, CLASSES + 1)
        counts[2] = bad
        with pytest.raises(ValueError, match="class_counts"):
            call(logits, labels, class_counts=counts)


def test_conventions_page_lists_exactly_the_reverse_mode_only_losses():
    import os
    import re

    with open(os.path.join(testing.REPO_ROOT, "docs", "guide", "conventions.md")) as file:
        readme = file.read()
    sentence = re.search(r"reverse-mode only: (.*?)\. Second order", readme, re.S).group(1)
    listed = set(re.findall(r"`(\w+)`", sentence))
    specs = (jaxloss.loss_spec(name) for name in NAMES)
    assert listed == {spec.fn.__name__ for spec in specs if spec.reverse_mode_only}


def test_every_loss_names_an_api_page_that_lists_the_registered_losses(spec):
    # The family pages list their losses from the specs (``.. registered-losses::``, docs/conf.py),
    # so a loss whose spec names no page, or a page without the directive, is missing from the docs.
    page = Path(testing.REPO_ROOT) / "docs" / "api" / f"{spec.page}.rst"
    assert spec.page is not None and page.is_file(), f"{spec.name}: page={spec.page!r}"
    assert ".. registered-losses::" in page.read_text(), f"{page} does not list its losses"


def test_inputs_are_prepared_once(spec, monkeypatch):
    # A loss built on an op (log ESF, the orthant probability, noised top-k) calls the op's
    # unchecked core after its own prepare: the op does not validate and move the logits again.
    from jaxloss import _validation

    calls = []
    prepare = _validation.prepare
    monkeypatch.setattr(
        _validation, "prepare", lambda *args, **kwargs: calls.append(1) or prepare(*args, **kwargs)
    )
    testing.spec_call(spec, num_classes=CLASSES)(*_inputs(10))
    assert len(calls) == 1
