"""Closed-form softmax losses against float64 NumPy oracles, limits, extremes and conventions."""

from __future__ import annotations

import functools
import json
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp

import jaxloss
from jaxloss import _validation
from jaxloss.losses import _softmax
from tests import testing

NUM_CLASSES = 5
COUNTS = np.array([50.0, 20.0, 9.0, 3.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Independent float64 references (class axis last), written from the papers' formulas.


def _log_probs(z):
    return z - logsumexp(z, axis=-1, keepdims=True)


def _pick(values, y):
    return np.take_along_axis(values, y[..., None], axis=-1)[..., 0]


def ref_cross_entropy(z, y):
    return -_pick(_log_probs(z), y)


def ref_label_relaxation(z, y, alpha):
    log_p = _log_probs(z)
    log_py = _pick(log_p, y)
    others = np.where(np.arange(z.shape[-1]) == y[..., None], -np.inf, log_p)
    log_rest = logsumexp(others, axis=-1)
    a = alpha
    first = (1 - a) * (np.log(1 - a) - log_py)
    second = a * (np.log(a) - log_rest) if a > 0 else 0.0
    return np.where(np.exp(log_py) >= 1 - a, 0.0, first + second)


def ref_confidence_penalty(z, y, beta):
    log_p = _log_probs(z)
    entropy = -np.sum(np.exp(log_p) * log_p, axis=-1)
    return -_pick(log_p, y) - beta * entropy


def ref_focal(z, y, gamma, class_weights=None):
    log_p = _log_probs(z)
    p_y = np.exp(_pick(log_p, y))
    weight = 1.0 if class_weights is None else np.asarray(class_weights)[y]
    return -weight * (1 - p_y) ** gamma * np.log(p_y)


def ref_balanced_softmax(z, y, counts):
    scaled = np.asarray(counts) * np.exp(z - z.max(-1, keepdims=True))
    return -np.log(_pick(scaled, y) / scaled.sum(-1))


def ref_logit_adjusted(z, y, priors, tau):
    return ref_cross_entropy(z + tau * np.log(priors), y)


# name -> (jaxloss function with hyperparameters bound, oracle with the same ones bound)
CASES = {
    "label_relaxation": (
        functools.partial(jaxloss.label_relaxation_loss, alpha=0.2),
        functools.partial(ref_label_relaxation, alpha=0.2),
    ),
    "confidence_penalty": (
        functools.partial(jaxloss.confidence_penalty_loss, beta=0.7),
        functools.partial(ref_confidence_penalty, beta=0.7),
    ),
    "softmax_focal": (
        functools.partial(jaxloss.softmax_focal_loss, gamma=1.5),
        functools.partial(ref_focal, gamma=1.5),
    ),
    "softmax_focal_weighted": (
        functools.partial(jaxloss.softmax_focal_loss, gamma=2.0, class_weights=COUNTS / 10),
        functools.partial(ref_focal, gamma=2.0, class_weights=COUNTS / 10),
    ),
    "balanced_softmax": (
        functools.partial(jaxloss.balanced_softmax_loss, class_counts=COUNTS),
        functools.partial(ref_balanced_softmax, counts=COUNTS),
    ),
    "logit_adjusted": (
        functools.partial(jaxloss.logit_adjusted_loss, class_counts=COUNTS, tau=0.5),
        functools.partial(ref_logit_adjusted, priors=COUNTS / COUNTS.sum(), tau=0.5),
    ),
}
NAMES = sorted(CASES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(7, NUM_CLASSES), (2, 3, NUM_CLASSES)])
def test_matches_float64_oracle(name, shape):
    fn, oracle = CASES[name]
    z = testing.random_logits(0, shape, scale=2.0)
    y = testing.random_labels(0, shape[:-1], NUM_CLASSES)
    testing.assert_matches_oracle(fn, oracle, z, y)


@pytest.mark.parametrize("name", NAMES)
def test_class_axis_first(name):
    fn, oracle = CASES[name]
    z = testing.random_logits(1, (NUM_CLASSES, 6))
    y = testing.random_labels(1, (6,), NUM_CLASSES)
    with jax.enable_x64(True):
        got = fn(jnp.asarray(z), jnp.asarray(y), axis=0)
    np.testing.assert_allclose(got, oracle(z.T, y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
    fn, _ = CASES[name]
    z = testing.random_logits(2, (4, NUM_CLASSES), scale=1.5)
    # Put every example outside label relaxation's credal set, where the loss is smooth.
    y = np.argmin(z, axis=-1)
    with jax.enable_x64(True):
        labels = jnp.asarray(y)
    testing.check_grads_f64(lambda x: fn(x, labels), (z,), order=2, modes=("rev", "fwd"))


def test_label_relaxation_gradient_is_p_minus_projection():
    alpha = 0.15
    z = testing.random_logits(3, (6, NUM_CLASSES))
    y = np.argmin(z, axis=-1)
    with jax.enable_x64(True):
        grad = jax.grad(
            lambda x: jaxloss.label_relaxation_loss(x, jnp.asarray(y), alpha=alpha).sum()
        )(jnp.asarray(z))
    p = np.exp(_log_probs(z))
    p_y = _pick(p, y)
    target = alpha * p / (1 - p_y)[:, None]
    target[np.arange(len(y)), y] = 1 - alpha
    np.testing.assert_allclose(grad, p - target, atol=1e-12)


def test_label_relaxation_is_zero_with_zero_gradient_inside_the_credal_set():
    z = jnp.array([[6.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    y = jnp.array([0, 2])
    loss, grad = jax.value_and_grad(lambda x: jaxloss.label_relaxation_loss(x, y, alpha=0.2).sum())(
        z
    )
    assert float(loss) == 0.0
    chex.assert_trees_all_equal(grad, jnp.zeros_like(z))


@pytest.mark.parametrize(
    "fn",
    [
        lambda z, y: jaxloss.label_relaxation_loss(z, y, alpha=0.0),
        lambda z, y: jaxloss.softmax_focal_loss(z, y, gamma=0.0),
        lambda z, y: jaxloss.confidence_penalty_loss(z, y, beta=0.0),
        lambda z, y: jaxloss.balanced_softmax_loss(z, y, class_counts=np.full(NUM_CLASSES, 7.0)),
        lambda z, y: jaxloss.logit_adjusted_loss(z, y, class_counts=COUNTS, tau=0.0),
    ],
    ids=["lr_alpha0", "focal_gamma0", "cp_beta0", "bs_uniform", "la_tau0"],
)
def test_limits_equal_cross_entropy(fn):
    z = jnp.asarray(testing.random_logits(4, (8, NUM_CLASSES), dtype=np.float32))
    y = jnp.asarray(testing.random_labels(4, (8,), NUM_CLASSES))
    ce = optax.softmax_cross_entropy_with_integer_labels(z, y)
    chex.assert_trees_all_close(fn(z, y), ce, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(
        jax.grad(lambda x: fn(x, y).sum())(z),
        jax.grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(x, y).sum())(z),
        atol=1e-6,
    )


def test_label_relaxation_tends_to_cross_entropy_as_alpha_shrinks():
    z = jnp.asarray(testing.random_logits(5, (8, NUM_CLASSES), dtype=np.float32))
    y = jnp.argmin(z, axis=-1)
    ce = optax.softmax_cross_entropy_with_integer_labels(z, y)
    gaps = [
        float(jnp.max(jnp.abs(jaxloss.label_relaxation_loss(z, y, alpha=a) - ce)))
        for a in (1e-1, 1e-3, 1e-6)
    ]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4


def test_balanced_softmax_is_invariant_to_rescaling_counts():
    z = jnp.asarray(testing.random_logits(6, (8, NUM_CLASSES), dtype=np.float32))
    y = jnp.asarray(testing.random_labels(6, (8,), NUM_CLASSES))
    chex.assert_trees_all_close(
        jaxloss.balanced_softmax_loss(z, y, class_counts=COUNTS),
        jaxloss.balanced_softmax_loss(z, y, class_counts=COUNTS / COUNTS.sum()),
        rtol=1e-6,
    )


def test_logit_adjusted_loss_stays_exact_for_a_prior_spread_beyond_float32_exponents():
    """tau log(max n / min n) = 104 here: shifting by max(z) + max(tau log pi) (the one-pass shift
    of small spreads) would leave every exponent of the first row below e^-87 (loss inf), so such
    spreads, and counts traced under jit, take the max of z + tau log pi."""
    counts = np.array([1.0, 1e9, 1e9, 1e9])
    z = np.array([[200.0, 0.0, 0.0, 0.0], [0.0, 3.0, -1.0, 2.0]])
    y = np.array([1, 0])
    expected = ref_logit_adjusted(z, y, counts / counts.sum(), tau=5.0)

    def loss(x, c):
        return jaxloss.logit_adjusted_loss(x, y, class_counts=c, tau=5.0)

    x = jnp.asarray(z, jnp.float32)
    for got in (loss(x, counts), jax.jit(loss)(x, counts)):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.all(np.isfinite(jax.grad(lambda x: loss(x, counts).sum())(x)))


def test_logit_adjust_moves_predictions_to_rare_classes():
    priors = COUNTS / COUNTS.sum()
    z = jnp.zeros((NUM_CLASSES,))
    adjusted = jaxloss.logit_adjust(z, class_counts=COUNTS)
    np.testing.assert_allclose(adjusted, -np.log(priors), rtol=1e-6)
    assert int(jnp.argmax(adjusted)) == NUM_CLASSES - 1
    z2 = jnp.asarray(testing.random_logits(7, (NUM_CLASSES, 3), dtype=np.float32))
    chex.assert_trees_all_close(
        jaxloss.logit_adjust(z2, class_counts=priors, tau=0.5, axis=0),
        z2 - 0.5 * jnp.log(priors)[:, None],
        rtol=1e-6,
    )


EXTREME = np.array(
    [[1e4, 0.0, -1e4, 5.0, 1e4], [-1e4, -1e4, -1e4, -1e4, 1e4], [0.0, 0.0, 0.0, 0.0, 0.0]],
    dtype=np.float32,
)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("label", [0, 2, 4])
def test_extreme_logits_float32_are_finite_and_accurate(name, label):
    fn, oracle = CASES[name]
    y = np.full((3,), label)
    testing.assert_finite_value_and_grad(fn, jnp.asarray(EXTREME), jnp.asarray(y))
    got = np.asarray(fn(jnp.asarray(EXTREME), jnp.asarray(y)), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        want = oracle(EXTREME.astype(np.float64), y)
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("offset", [-1e3, 1e4])
def test_large_offsets_keep_float32_precision(name, offset):
    # At |z| = 1e4 a float32 ulp is 1e-3: the losses must subtract the row maximum first.
    fn, oracle = CASES[name]
    z = (testing.random_logits(11, (6, NUM_CLASSES), scale=2.0) + offset).astype(np.float32)
    y = testing.random_labels(11, (6,), NUM_CLASSES)
    got = np.asarray(fn(jnp.asarray(z), jnp.asarray(y)), dtype=np.float64)
    np.testing.assert_allclose(got, oracle(z.astype(np.float64), y), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_inputs_are_computed_in_float32(name):
    fn, _ = CASES[name]
    z = jnp.asarray(testing.random_logits(8, (6, NUM_CLASSES), dtype=np.float32))
    y = jnp.asarray(testing.random_labels(8, (6,), NUM_CLASSES))
    out = fn(z.astype(jnp.bfloat16), y)
    assert out.dtype == jnp.bfloat16
    want = fn(z.astype(jnp.bfloat16).astype(jnp.float32), y)
    chex.assert_trees_all_close(out.astype(jnp.float32), want, rtol=1e-2, atol=1e-2)
    grad = jax.grad(lambda x: fn(x, y).astype(jnp.float32).sum())(z.astype(jnp.bfloat16))
    assert grad.dtype == jnp.bfloat16
    chex.assert_tree_all_finite(grad)


@pytest.mark.parametrize("name", NAMES)
def test_jit_and_vmap_agree_with_eager(name):
    fn, _ = CASES[name]
    z = jnp.asarray(testing.random_logits(9, (3, 4, NUM_CLASSES), dtype=np.float32))
    y = jnp.asarray(testing.random_labels(9, (3, 4), NUM_CLASSES))
    eager = fn(z, y)
    chex.assert_shape(eager, (3, 4))
    chex.assert_trees_all_close(jax.jit(fn)(z, y), eager, rtol=1e-6)
    chex.assert_trees_all_close(jax.vmap(fn)(z, y), eager, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_where_mask_equals_dropping_the_class(name):
    fn, _ = CASES[name]
    # Losses with a per-class vector compare against the same loss with that entry dropped too.
    kept = slice(None, -1)
    dropped_fn = {
        "balanced_softmax": functools.partial(
            jaxloss.balanced_softmax_loss, class_counts=COUNTS[kept]
        ),
        "logit_adjusted": functools.partial(
            jaxloss.logit_adjusted_loss, class_counts=COUNTS[kept], tau=0.5
        ),
        "softmax_focal_weighted": functools.partial(
            jaxloss.softmax_focal_loss, gamma=2.0, class_weights=COUNTS[kept] / 10
        ),
    }.get(name, fn)
    z = testing.random_logits(10, (6, NUM_CLASSES), dtype=np.float32)
    y = testing.random_labels(10, (6,), NUM_CLASSES - 1)
    where = np.arange(NUM_CLASSES) < NUM_CLASSES - 1
    masked = fn(jnp.asarray(z), jnp.asarray(y), where=jnp.asarray(where))
    dropped = dropped_fn(jnp.asarray(z[:, :-1]), jnp.asarray(y))
    chex.assert_trees_all_close(masked, dropped, rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda x: fn(x, jnp.asarray(y), where=jnp.asarray(where)).sum())(jnp.asarray(z))
    chex.assert_tree_all_finite(grad)
    np.testing.assert_array_equal(grad[:, -1], 0.0)


# ---------------------------------------------------------------------------------------------
# Masks and tuple axes: the cross-entropy limits of every loss take optax's values there.

CROSS_ENTROPY_LIMITS = {
    "shared_cross_entropy": lambda z, y, where=None, axis=-1: _prepared_cross_entropy(
        z, y, where=where, axis=axis
    ),
    "label_relaxation_alpha0": functools.partial(jaxloss.label_relaxation_loss, alpha=0.0),
    "confidence_penalty_beta0": functools.partial(jaxloss.confidence_penalty_loss, beta=0.0),
    "softmax_focal_gamma0": functools.partial(jaxloss.softmax_focal_loss, gamma=0.0),
    "balanced_softmax_equal_counts": lambda z, y, **kwargs: jaxloss.balanced_softmax_loss(
        z, y, class_counts=np.full(int(np.prod(z.shape)) // y.size, 3.0), **kwargs
    ),
}


def _prepared_cross_entropy(logits, labels, *, where, axis):
    inputs = _validation.prepare(logits, labels, axis=axis, where=where)
    return _softmax.cross_entropy(inputs.logits, inputs.labels, where=inputs.where)


def _mask_cases():
    rng = np.random.default_rng(12)
    z = (3.0 * rng.standard_normal((6, NUM_CLASSES))).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0])
    classes = np.ones((6, NUM_CLASSES), bool)
    classes[0] = False  # no class left
    classes[1, 1] = False  # the label's class is masked
    classes[2, [0, 4]] = False
    classes[5, 0] = False  # masked label with the largest logit
    z[5, 0] = 8.0
    examples = np.array([True, False, True, True, False, True])
    zt = (3.0 * rng.standard_normal((4, 2, 3))).astype(np.float32)
    yt = np.array([0, 5, 3, 1])
    classes_t = rng.random((4, 2, 3)) > 0.4
    classes_t[0] = False
    return {
        "class_mask": (z, y, classes, -1),
        "example_mask": (z, y, examples, -1),
        "tuple_axis": (zt, yt, None, (1, 2)),
        "tuple_axis_class_mask": (zt, yt, classes_t, (1, 2)),
        "tuple_axis_example_mask": (zt, yt, examples[:4], (1, 2)),
    }


MASK_CASES = _mask_cases()


@pytest.mark.parametrize("case", sorted(MASK_CASES))
@pytest.mark.parametrize("name", sorted(CROSS_ENTROPY_LIMITS))
def test_cross_entropy_limits_match_optax_under_masks_and_tuple_axes(name, case):
    # optax: a masked label's logit enters as it is; a row with no class left is 0.
    fn = CROSS_ENTROPY_LIMITS[name]
    z, y, where, axis = MASK_CASES[case]
    z, y = jnp.asarray(z), jnp.asarray(y)
    where = None if where is None else jnp.asarray(where)

    def ours(x):
        return fn(x, y, where=where, axis=axis)

    def theirs(x):
        return optax.softmax_cross_entropy_with_integer_labels(x, y, axis=axis, where=where)

    chex.assert_trees_all_close(ours(z), theirs(z), rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda x: ours(x).sum())(z)
    chex.assert_trees_all_close(grad, jax.grad(lambda x: theirs(x).sum())(z), atol=1e-6)
    if where is not None and where.shape == z.shape:
        # The class axes are last here: flatten them as optax does.
        grad = np.asarray(grad).reshape(len(y), -1)
        kept = np.asarray(where).reshape(len(y), -1)
        others = np.arange(kept.shape[1]) != np.asarray(y)[:, None]
        # Masked classes other than the label get no gradient; a row with no class left none.
        np.testing.assert_array_equal(grad[~kept & others], 0.0)
        np.testing.assert_array_equal(grad[~kept.any(axis=1)], 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_masked_label_is_finite_and_no_class_left_is_zero(name):
    fn, _ = CASES[name]
    z, y, where, _ = MASK_CASES["class_mask"]
    loss, grad = jax.value_and_grad(lambda x: fn(x, jnp.asarray(y), where=where).sum())(
        jnp.asarray(10.0 * z)
    )
    chex.assert_tree_all_finite((loss, grad))
    per_example = fn(jnp.asarray(z), jnp.asarray(y), where=where)
    assert float(per_example[0]) == 0.0
    np.testing.assert_array_equal(grad[0], 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_plus_inf_logit_gives_the_limit_or_a_non_finite_value(name):
    fn, _ = CASES[name]
    z = jnp.asarray(testing.random_logits(13, (3, NUM_CLASSES), dtype=np.float32))
    y = jnp.array([1, 1, 1])
    inf_logits = z.at[0, 1].set(jnp.inf).at[1, 3].set(jnp.inf)
    got = np.asarray(fn(inf_logits, y))
    # +inf at the label: the limit is 0 (p_y = 1) for every loss here; NaN is accepted.
    assert got[0] == 0.0 or np.isnan(got[0])
    # +inf at another class: the limit is +inf (p_y = 0).
    assert got[1] == np.inf or np.isnan(got[1])
    np.testing.assert_allclose(got[2], fn(z, y)[2], rtol=1e-6)


def test_shared_cross_entropy_is_float64_exact_and_optax_shaped():
    z = testing.random_logits(14, (5, NUM_CLASSES), scale=4.0)
    y = testing.random_labels(14, (5,), NUM_CLASSES)
    testing.assert_matches_oracle(
        lambda x, t: _softmax.cross_entropy(x, t), ref_cross_entropy, z, y
    )
    with jax.enable_x64(True):
        ce = _softmax.cross_entropy(jnp.asarray(z) + 1e4, jnp.asarray(y))
    np.testing.assert_allclose(ce, ref_cross_entropy(z, y), rtol=1e-10)


def test_logit_adjust_gives_one_result_for_counts_and_priors():
    z = jnp.asarray(testing.random_logits(15, (4, NUM_CLASSES), dtype=np.float32))
    chex.assert_trees_all_close(
        jaxloss.logit_adjust(z, class_counts=COUNTS, tau=1.5),
        jaxloss.logit_adjust(z, class_counts=COUNTS / COUNTS.sum(), tau=1.5),
        rtol=1e-6,
    )


def test_logit_adjust_takes_one_class_axis():
    with pytest.raises(ValueError, match=r"axis=\(0, 1\): this function takes one class axis"):
        jaxloss.logit_adjust(jnp.zeros((2, 3, 4)), class_counts=np.ones(6), axis=(0, 1))


# ---------------------------------------------------------------------------------------------
# Bad inputs raise at trace time with a message naming the problem.


@pytest.mark.parametrize("name", NAMES)
def test_integer_logits_are_rejected(name):
    fn, _ = CASES[name]
    with pytest.raises(TypeError, match="logits must be a floating-point array"):
        jax.jit(fn)(jnp.zeros((2, NUM_CLASSES), jnp.int32), jnp.zeros((2,), jnp.int32))


@pytest.mark.parametrize("name", NAMES)
def test_float_labels_are_rejected(name):
    fn, _ = CASES[name]
    with pytest.raises(TypeError, match="labels must be integer"):
        fn(jnp.zeros((2, NUM_CLASSES)), jnp.zeros((2,)))


@pytest.mark.parametrize("name", NAMES)
def test_label_shape_mismatch_names_both_shapes(name):
    fn, _ = CASES[name]
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(2,\).*got \(3,\)"):
        jax.jit(fn)(jnp.zeros((2, NUM_CLASSES)), jnp.zeros((3,), jnp.int32))


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda z, y: jaxloss.label_relaxation_loss(z, y, alpha=1.0),
            r"alpha must be in \[0.0, 1.0\)",
        ),
        (lambda z, y: jaxloss.label_relaxation_loss(z, y, alpha=-0.1), r"alpha .* got -0.1"),
        (
            lambda z, y: jaxloss.confidence_penalty_loss(z, y, beta=-1.0),
            r"beta must be in \[0.0, inf\]",
        ),
        (lambda z, y: jaxloss.softmax_focal_loss(z, y, gamma=-2.0), r"gamma must be in"),
        (
            lambda z, y: jaxloss.softmax_focal_loss(z, y, class_weights=-np.ones(NUM_CLASSES)),
            r"class_weights must be in \[0, inf\]",
        ),
        (
            lambda z, y: jaxloss.balanced_softmax_loss(
                z, y, class_counts=np.array([1.0, 0, 1, 1, 1])
            ),
            r"class_counts must be in \(0, inf\] and finite, got \[0.0\]",
        ),
        (
            lambda z, y: jaxloss.balanced_softmax_loss(z, y, class_counts=np.ones(4)),
            r"class_counts must have shape \(5,\).*got shape \(4,\)",
        ),
        (
            lambda z, y: jaxloss.logit_adjusted_loss(z, y, class_counts=np.ones(5), tau=-1.0),
            r"tau must be in",
        ),
        (lambda z, y: jaxloss.label_relaxation_loss(z[:, :1], y), r"at least 2"),
        (lambda z, y: jaxloss.label_relaxation_loss(z, y, axis=2), r"axis=2 is out of range"),
        (
            lambda z, y: jaxloss.softmax_focal_loss(z, y, where=np.ones((3,), bool)),
            r"where of shape \(3,\) does not broadcast",
        ),
    ],
)
def test_bad_hyperparameters_raise_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(jnp.zeros((2, NUM_CLASSES)), jnp.zeros((2,), jnp.int32))


# ---------------------------------------------------------------------------------------------
# Inside shard_map with the classes split (class_axis_name): masks and per-class vectors.

_SHARD_MAP_CODE = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import jaxloss

batch, classes = 4, 8
rng = np.random.default_rng(0)
z = jnp.asarray(3 * rng.standard_normal((batch, classes)), jnp.float32)
y = jnp.array([1, 6, 3, 5])  # one label in each of the 4 shards of a 1 x 4 mesh
counts = jnp.asarray([50.0, 20.0, 9.0, 3.0, 1.0, 7.0, 400.0, 2.0])
weights = counts / 10
# Row 0 masks its label's class, row 2 every class but one, row 3 every class.
class_mask = jnp.asarray(rng.random((batch, classes)) > 0.3).at[0, 1].set(False)
class_mask = class_mask.at[2].set(jnp.arange(classes) == 4).at[3].set(False)
example_mask = jnp.array([True, False, True, False])

# name -> loss of (logits, labels, per-class vector, where, **options)
CASES = {
    "label_relaxation": lambda z, y, v, w, **o: jaxloss.label_relaxation_loss(
        z, y, alpha=0.2, where=w, **o),
    "confidence_penalty": lambda z, y, v, w, **o: jaxloss.confidence_penalty_loss(
        z, y, beta=0.7, where=w, **o),
    "softmax_focal": lambda z, y, v, w, **o: jaxloss.softmax_focal_loss(
        z, y, gamma=1.5, where=w, **o),
    "softmax_focal_weighted": lambda z, y, v, w, **o: jaxloss.softmax_focal_loss(
        z, y, gamma=1.5, class_weights=v / 10, where=w, **o),
    "balanced_softmax": lambda z, y, v, w, **o: jaxloss.balanced_softmax_loss(
        z, y, class_counts=v, where=w, **o),
    "logit_adjusted": lambda z, y, v, w, **o: jaxloss.logit_adjusted_loss(
        z, y, class_counts=v, tau=0.5, where=w, **o),
    "poly1": lambda z, y, v, w, **o: jaxloss.poly1_loss(z, y, epsilon=2.0, where=w, **o),
}

results = {"logit_adjust": []}
for d, m in ((2, 2), (1, 4)):
    mesh = Mesh(np.array(jax.devices()).reshape(d, m), ("data", "model"))
    for mask, where, spec in (("class", class_mask, P("data", "model")),
                              ("example", example_mask, P("data"))):
        for name, fn in CASES.items():
            failed = results.setdefault(f"{name}/{mask}", [])
            mean = lambda f: jax.value_and_grad(lambda z: jnp.mean(f(z)))
            want = jax.jit(mean(lambda z: fn(z, y, counts, where)))(z)
            split = jax.shard_map(
                lambda z, y, v, w: fn(z, y, v, w, class_axis_name="model"), mesh=mesh,
                in_specs=(P("data", "model"), P("data"), P("model"), spec),
                out_specs=P("data"))
            try:
                got = jax.jit(mean(lambda z: split(z, y, counts, where)))(z)
            except Exception as error:  # one broken loss must not hide the others' results
                failed.append(f"{d}x{m}: {type(error).__name__}: {str(error)[:500]}")
                continue
            for part, g, w in zip(("value", "gradient"), got, want):
                if not np.allclose(g, w, rtol=1e-5, atol=1e-7):
                    failed.append(f"{d}x{m}: {part} off by {float(np.abs(g - w).max())}")
    adjust = jax.shard_map(
        lambda z, v: jaxloss.logit_adjust(z, class_counts=v, tau=0.5, class_axis_name="model"),
        mesh=mesh, in_specs=(P("data", "model"), P("model")), out_specs=P("data", "model"))
    if not np.allclose(jax.jit(adjust)(z, counts),
                       jaxloss.logit_adjust(z, class_counts=counts, tau=0.5), rtol=1e-6):
        results["logit_adjust"].append(f"{d}x{m}: values differ")

# A per-class vector under shard_map is the device's block: the whole vector is an error.
whole = jax.shard_map(
    lambda z, y: jaxloss.balanced_softmax_loss(z, y, class_counts=counts, class_axis_name="model"),
    mesh=mesh, in_specs=(P("data", "model"), P("data")), out_specs=P("data"))
try:
    whole(z, y)
    results["whole_vector_error"] = "no error"
except ValueError as error:
    results["whole_vector_error"] = str(error)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def shard_map_results():
    out = testing.run_on_devices(_SHARD_MAP_CODE, num_devices=4)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("mask", ["class", "example"])
@pytest.mark.parametrize("name", [*NAMES, "poly1"])
def test_split_classes_under_shard_map_match_single_device_under_masks(
    shard_map_results, name, mask
):
    # Each device holds 4 or 2 of the 8 classes (and its block of the counts or weights); the
    # values and gradients of the batch mean equal the single-device ones on 2x2 and 1x4 meshes.
    failed = shard_map_results[f"{name}/{mask}"]
    assert failed == [], "\n".join(failed)


def test_logit_adjust_under_shard_map_normalizes_over_every_shard(shard_map_results):
    assert shard_map_results["logit_adjust"] == []


def test_whole_class_vector_under_shard_map_names_the_local_shape(shard_map_results):
    error = shard_map_results["whole_vector_error"]
    assert "class_counts must be this device's block" in error
    assert "shape (2,) for the 2 classes of its logits" in error
    assert "the whole vector of 8 classes" in error


@pytest.mark.parametrize("name", ["balanced_softmax", "logit_adjusted", "ldam"])
def test_concrete_jax_array_counts_compile_as_numpy_counts(name, monkeypatch):
    # A concrete jax.Array is as known as a NumPy array: the same program (the logit shift of
    # max(z) + max(tau log pi) when the prior's spread is known), and only traced counts differ.
    spreads = []
    shifted_logits = _softmax.shifted_logits

    def spy(*args, **kwargs):
        spreads.append(kwargs.get("bias_spread"))
        return shifted_logits(*args, **kwargs)

    monkeypatch.setattr(_softmax, "shifted_logits", spy)
    loss = getattr(jaxloss, f"{name}_loss")
    logits, labels = jnp.zeros((4, NUM_CLASSES)), jnp.arange(4)

    def program(counts, *args):
        step = jax.value_and_grad(
            lambda x, *c: loss(x, labels, class_counts=(c or [counts])[0]).sum()
        )
        hlo = jax.jit(step).lower(logits, *args).compile().as_text()
        # Without the source locations (where the counts were made differs).
        return re.sub(r", metadata=\{[^}]*\}", "", hlo.split("\nFileNames")[0])

    assert program(jnp.asarray(COUNTS, jnp.float32)) == program(COUNTS.astype(np.float32))
    if name != "ldam":  # LDAM's margins have no shift to choose
        assert spreads == [pytest.approx(np.log(50.0))] * 2
        program(None, jnp.asarray(COUNTS, jnp.float32))
        assert spreads[-1] is None
