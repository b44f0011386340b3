"""Tests of the noised top-k hinge losses, the LDAM margins and the LDAM loss."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import jaxloss
from tests import testing
from tests.ops.test_noised_topk import exact_smoothed_kth

COUNTS = np.array([17.0, 23.0, 55.0, 9.0, 30.0])


def numpy_margins(counts, max_m):
    weights = np.asarray(counts, np.float64) ** -0.25
    return max_m * weights / weights.max()


def numpy_noised_hinge(logits, labels, noise, k, epsilon, margins, scale):
    """scale * [m_y + mean_s top_{k+1}(s + εZ_s) - s_y]_+ and its gradient, by full sorts."""
    y = logits[..., None] + epsilon * noise  # (B, C, S)
    order = np.argsort(-y, axis=1, kind="stable")[:, k, :]  # index of the (k+1)-th largest
    threshold = np.take_along_axis(y, order[:, None, :], 1)[:, 0, :].mean(-1)
    true = logits[np.arange(len(labels)), labels]
    gap = margins[labels] + threshold - true
    counts = (order[:, None, :] == np.arange(logits.shape[1])[:, None]).mean(-1)
    grad = scale * (gap > 0)[:, None] * (counts - np.eye(logits.shape[1])[labels])
    return scale * np.maximum(gap, 0.0), grad


def _per_example_and_grad(loss_fn):
    @jax.jit
    def run(logits, labels, noise):
        def total(x):
            return jnp.sum(loss_fn(x, labels, noise=noise, sample_size=noise.shape[-1]))

        return loss_fn(logits, labels, noise=noise, sample_size=noise.shape[-1]), jax.grad(total)(
            logits
        )

    return run


_balanced = _per_example_and_grad(
    functools.partial(jaxloss.balanced_noised_topk_loss, k=2, epsilon=0.7)
)
_imbalanced = _per_example_and_grad(
    functools.partial(
        jaxloss.imbalanced_noised_topk_loss,
        class_counts=COUNTS,
        k=2,
        epsilon=0.05,
        max_m=0.3,
        scale=40.0,
    )
)


def test_ldam_margins_match_the_reference_example():
    # The spec's value for cls_num_list=[17, 23, 55], max_m=0.3.
    np.testing.assert_allclose(
        jaxloss.ldam_margins([17, 23, 55], max_m=0.3), [0.3, 0.2781644, 0.2236881], rtol=1e-6
    )
    np.testing.assert_allclose(
        jaxloss.ldam_margins(COUNTS, max_m=0.5), numpy_margins(COUNTS, 0.5), rtol=1e-6
    )


def test_balanced_loss_with_injected_noise_matches_numpy():
    logits = testing.random_logits(0, (16, 5), scale=1.0, dtype=np.float32)
    labels = testing.random_labels(0, (16,), 5)
    noise = np.random.default_rng(1).standard_normal((16, 5, 6)).astype(np.float32)
    loss, grad = _balanced(logits, labels, noise)
    want, want_grad = numpy_noised_hinge(logits, labels, noise, 2, 0.7, np.ones(5), 1.0)
    assert 0 < np.count_nonzero(want) < 16  # both branches of the hinge are exercised
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, atol=1e-6)


def test_imbalanced_loss_with_injected_noise_matches_numpy():
    logits = testing.random_logits(2, (16, 5), scale=0.5, dtype=np.float32)
    labels = testing.random_labels(2, (16,), 5)
    noise = np.random.default_rng(3).standard_normal((16, 5, 6)).astype(np.float32)
    loss, grad = _imbalanced(logits, labels, noise)
    margins = numpy_margins(COUNTS, 0.3)
    want, want_grad = numpy_noised_hinge(logits, labels, noise, 2, 0.05, margins, 40.0)
    assert 0 < np.count_nonzero(want) < 16
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad, want_grad, atol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_epsilon_zero_is_the_hard_topk_hinge(k):
    logits = testing.random_logits(4, (10, 6), scale=1.0, dtype=np.float32)
    labels = testing.random_labels(4, (10,), 6)
    kth = -np.sort(-logits, axis=1)[:, k]  # the (k+1)-th largest
    true = logits[np.arange(10), labels]
    np.testing.assert_allclose(
        jaxloss.balanced_noised_topk_loss(logits, labels, k=k, epsilon=0.0),
        np.maximum(1 + kth - true, 0),
        rtol=1e-6,
    )
    margins = numpy_margins(COUNTS[:5].tolist() + [4.0], 0.2)
    got = jaxloss.imbalanced_noised_topk_loss(
        logits, labels, class_counts=[17, 23, 55, 9, 30, 4], k=k, epsilon=0.0, max_m=0.2
    )
    np.testing.assert_allclose(got, 50 * np.maximum(margins[labels] + kth - true, 0), rtol=1e-5)


def test_readme_example_matches_the_exact_expectation():
    # The spec's exact S = ∞ batch means: 0.499992 (balanced, ε=1) and 5.592202 (imbalanced).
    scores = np.array([[2.0, 1.5, -3.0], [7.5, 4.0, -1.5]], np.float32)
    labels = np.array([0, 2])
    keys = jax.random.split(jax.random.key(0), 20)

    @jax.jit
    def batch_means(key):
        bal = jaxloss.balanced_noised_topk_loss(
            scores, labels, k=2, epsilon=1.0, sample_size=5000, key=key
        )
        imbal = jaxloss.imbalanced_noised_topk_loss(
            scores,
            labels,
            class_counts=[17, 23, 55],
            k=2,
            epsilon=0.01,
            max_m=0.3,
            sample_size=5000,
            key=key,
        )
        return bal.mean(), imbal.mean()

    bal, imbal = jax.vmap(batch_means)(keys)
    for draws, exact in ((bal, 0.499992), (imbal, 5.592202)):
        se = np.std(draws) / np.sqrt(len(draws))
        assert abs(np.mean(draws) - exact) < 4 * se + 1e-5


def test_monte_carlo_loss_matches_the_smoothed_hinge_away_from_the_kink():
    # Rows whose margin is far from 0 in MC units: E[loss] = [1 + φ_{k+1}(s) - s_y]_+ there.
    logits = np.array([[0.5, 2.0, -0.3, 1.2], [3.0, 0.1, -0.4, 0.2]], np.float32)
    labels = np.array([2, 0])
    losses = jax.vmap(
        lambda key: jaxloss.balanced_noised_topk_loss(
            logits, labels, k=1, epsilon=0.8, sample_size=4000, key=key
        )
    )(jax.random.split(jax.random.key(1), 20))
    exact = [
        max(1 + exact_smoothed_kth(s, 2, 0.8)[0] - s[y], 0)
        for s, y in zip(logits, labels, strict=True)
    ]
    se = np.std(losses, 0) / np.sqrt(losses.shape[0])
    assert exact[1] == 0 and np.all(losses[:, 1] == 0)
    assert abs(np.mean(losses[:, 0]) - exact[0]) < 4 * se[0] + 1e-6


def test_axis_where_and_per_example_gradients():
    logits = testing.random_logits(5, (6, 5, 3), scale=1.0, dtype=np.float32)  # classes on axis 1
    labels = testing.random_labels(5, (6, 3), 5)
    noise = np.random.default_rng(6).standard_normal((6, 5, 3, 4)).astype(np.float32)
    kwargs = dict(k=1, epsilon=0.5, sample_size=4)
    got = jaxloss.balanced_noised_topk_loss(logits, labels, noise=noise, axis=1, **kwargs)
    moved = np.moveaxis(logits, 1, -1)
    want = jaxloss.balanced_noised_topk_loss(
        moved, labels, noise=np.moveaxis(noise, 1, -2), **kwargs
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)

    where = np.array([True, True, False, True, True])
    flat = moved.reshape(-1, 5)
    flat_labels = np.where(labels.ravel() == 2, 0, labels.ravel())
    flat_noise = np.moveaxis(noise, 1, -2).reshape(-1, 5, 4)
    masked = jaxloss.balanced_noised_topk_loss(
        flat, flat_labels, noise=flat_noise, where=where, **kwargs
    )
    kept = jaxloss.balanced_noised_topk_loss(
        flat[:, where],
        np.searchsorted(np.flatnonzero(where), flat_labels),
        noise=flat_noise[:, where],
        **kwargs,
    )
    np.testing.assert_allclose(masked, kept, rtol=1e-6)

    grad = jax.grad(
        lambda x: jaxloss.balanced_noised_topk_loss(
            x, flat_labels, noise=flat_noise, **kwargs
        ).sum()
    )(flat)
    per_example = jax.vmap(
        jax.grad(lambda x, y, z: jaxloss.balanced_noised_topk_loss(x, y, noise=z, **kwargs)),
    )(flat, flat_labels, flat_noise)
    np.testing.assert_allclose(per_example, grad, atol=1e-6)


def test_dtypes_and_extreme_inputs():
    logits = testing.random_logits(7, (4, 6), dtype=np.float32)
    labels = testing.random_labels(7, (4,), 6)
    key = jax.random.key(0)
    out = jaxloss.balanced_noised_topk_loss(
        jnp.asarray(logits, jnp.bfloat16), labels, k=2, epsilon=1.0, key=key
    )
    assert out.dtype == jnp.bfloat16
    big = 1e4 * np.sign(logits)
    imbalanced = functools.partial(
        jaxloss.imbalanced_noised_topk_loss,
        class_counts=np.arange(1, 7),
        k=2,
        epsilon=1e-3,
        max_m=0.2,
        key=key,
    )
    testing.assert_finite_value_and_grad(jax.jit(imbalanced), big, labels)
    with jax.enable_x64(True):
        assert imbalanced(logits.astype(np.float64), labels).dtype == jnp.float64
    ldam = functools.partial(jaxloss.ldam_loss, class_counts=np.arange(1, 7), max_m=0.5)
    testing.assert_finite_value_and_grad(jax.jit(ldam), big, labels)


def numpy_ldam(logits, labels, counts, max_m, scale):
    shifted = np.array(logits, np.float64)
    rows = np.arange(len(labels))
    shifted[rows, labels] -= numpy_margins(counts, max_m)[labels]
    z = scale * shifted
    return special.logsumexp(z, axis=1) - z[rows, labels]


def test_ldam_loss_matches_numpy_and_finite_differences():
    logits = testing.random_logits(8, (7, 5), scale=0.6)
    labels = testing.random_labels(8, (7,), 5)
    # A fresh array: JAX caches the conversion of a NumPy constant, and COUNTS was first converted
    # to float32 outside x64 by the tests above.
    counts = COUNTS.copy()
    fn = functools.partial(jaxloss.ldam_loss, class_counts=counts, max_m=0.4, scale=20.0)
    testing.assert_matches_oracle(
        lambda x, y: fn(x, y),
        lambda x, y: numpy_ldam(x, y, COUNTS, 0.4, 20.0),
        logits,
        labels,
    )
    testing.check_grads_f64(jax.jit(lambda x: fn(x, labels)), (logits,))
    # max_m = 0 and scale = 1 is the plain softmax cross-entropy.
    np.testing.assert_allclose(
        jaxloss.ldam_loss(
            logits.astype(np.float32), labels, class_counts=COUNTS, max_m=0.0, scale=1.0
        ),
        numpy_ldam(logits, labels, COUNTS, 0.0, 1.0),
        rtol=1e-5,
    )


def test_bad_inputs_raise():
    logits = np.zeros((2, 4), np.float32)
    labels = np.array([0, 1])
    key = jax.random.key(0)
    bal = jaxloss.balanced_noised_topk_loss
    with pytest.raises(ValueError, match="k must be in"):
        bal(logits, labels, k=4, epsilon=1.0, key=key)  # k + 1 > classes
    with pytest.raises(ValueError, match="epsilon must be in"):
        bal(logits, labels, k=1, epsilon=-1.0, key=key)
    with pytest.raises(ValueError, match="sample_size must be in"):
        bal(logits, labels, k=1, epsilon=1.0, sample_size=0, key=key)
    with pytest.raises(ValueError, match="either key or noise"):
        bal(logits, labels, k=1, epsilon=1.0, key=key, noise=np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        bal(logits, labels, k=1, epsilon=1.0)
    imbal = functools.partial(
        jaxloss.imbalanced_noised_topk_loss, logits, labels, k=1, epsilon=0.1, key=key
    )
    with pytest.raises(ValueError, match="class_counts must be in"):
        imbal(class_counts=[3, 0, 2, 1], max_m=0.2)
    with pytest.raises(ValueError, match="class_counts must have shape"):
        imbal(class_counts=[3, 2, 1], max_m=0.2)
    with pytest.raises(ValueError, match="max_m must be in"):
        imbal(class_counts=[3, 2, 2, 1], max_m=-0.2)
    with pytest.raises(ValueError, match="scale must be in"):
        imbal(class_counts=[3, 2, 2, 1], max_m=0.2, scale=0.0)
    with pytest.raises(ValueError, match="class_counts must be in"):
        jaxloss.ldam_margins([1.0, -2.0], max_m=0.5)
    with pytest.raises(ValueError, match="class_counts must be a vector"):
        jaxloss.ldam_margins(np.ones((2, 2)), max_m=0.5)
    with pytest.raises(ValueError, match="labels must have"):
        bal(logits, np.array([0]), k=1, epsilon=0.0)
    with pytest.raises(ValueError, match="not an axis of an enclosing shard_map"):
        jaxloss.ldam_loss(logits, labels, class_counts=[3, 2, 2, 1], class_axis_name="model")


@pytest.mark.parametrize("epsilon", [np.inf, np.nan])
def test_an_infinite_or_nan_epsilon_is_refused_by_the_op_as_by_the_losses(epsilon):
    # The op and the losses share one check of epsilon (ops._noised_topk.check_draws): finite.
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, inf\] and finite"):
        jaxloss.ops.noised_topk(x, k=2, epsilon=epsilon, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, inf\] and finite"):
        jaxloss.balanced_noised_topk_loss(
            x, np.array([0, 1]), k=1, epsilon=epsilon, key=jax.random.key(0)
        )


@pytest.mark.parametrize("offset", [1e4, -1e4])
def test_float32_at_large_offsets_matches_float64(offset):
    # Scores 1e4 away from 0 (a float32 ulp there is 1e-3): the margins and the noise must not be
    # rounded away against the offset. Oracle: float64 on the same float32 inputs.
    rng = np.random.default_rng(4)
    logits = (offset + 0.5 * rng.standard_normal((64, 5))).astype(np.float32)
    labels = rng.integers(0, 5, 64)
    noise = rng.standard_normal((64, 5, 6)).astype(np.float32)
    x64, noise64 = logits.astype(np.float64), noise.astype(np.float64)
    imbalanced, _ = _imbalanced(logits, labels, noise)
    want, _ = numpy_noised_hinge(x64, labels, noise64, 2, 0.05, numpy_margins(COUNTS, 0.3), 40.0)
    assert np.count_nonzero(want) > 16
    np.testing.assert_allclose(imbalanced, want, rtol=1e-6, atol=2e-5)
    balanced, _ = _balanced(logits, labels, noise)
    want, _ = numpy_noised_hinge(x64, labels, noise64, 2, 0.7, np.ones(5), 1.0)
    np.testing.assert_allclose(balanced, want, rtol=1e-6, atol=1e-6)
    ldam = jaxloss.ldam_loss(logits, labels, class_counts=COUNTS, max_m=0.4, scale=20.0)
    want = numpy_ldam(x64, labels, COUNTS, 0.4, 20.0)
    np.testing.assert_allclose(ldam, want, rtol=1e-6, atol=1e-5)


def test_masked_label_and_rows_short_of_classes():
    logits = testing.random_logits(9, (4, 6), scale=1.0, dtype=np.float32)
    labels = np.array([1, 4, 0, 5])
    keep = np.ones((4, 6), bool)
    keep[0, 1] = False  # the label's own class: it no longer ranks, its score still counts
    keep[1, :3] = False  # k + 1 = 3 ranked classes left, the label among them
    keep[2, [0, 2, 5]] = False  # the label masked too, k + 1 others left
    keep[3] = False  # nothing left
    noise = np.random.default_rng(10).standard_normal((4, 6, 5)).astype(np.float32)
    kwargs = dict(k=2, epsilon=0.5, noise=noise, sample_size=5, where=keep)
    got = jaxloss.balanced_noised_topk_loss(logits, labels, **kwargs)
    y = logits[..., None] + 0.5 * noise  # (B, C, S), float32 as the loss draws it
    thresholds = [
        np.sort(y[b][keep[b]], axis=0)[-3].mean() if keep[b].sum() >= 3 else -np.inf
        for b in range(4)
    ]
    want = np.maximum(1 + np.array(thresholds) - logits[np.arange(4), labels], 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(want[:3] > 0) and want[3] == 0.0
    grad = jax.grad(lambda x: jaxloss.balanced_noised_topk_loss(x, labels, **kwargs).sum())(logits)
    np.testing.assert_array_equal(grad[3], 0.0)
    np.testing.assert_array_equal(np.asarray(grad)[~keep & (np.arange(6) != labels[:, None])], 0)
    # With fewer than k + 1 classes to rank the label is in the top k: loss 0, gradient 0.
    short = keep.copy()
    short[1, 3] = False
    got = jaxloss.balanced_noised_topk_loss(logits, labels, **{**kwargs, "where": short})
    assert got[1] == 0.0


def test_ldam_second_derivatives():
    logits = testing.random_logits(11, (3, 5), scale=0.6)
    labels = testing.random_labels(11, (3,), 5)
    fn = functools.partial(jaxloss.ldam_loss, class_counts=COUNTS.copy(), max_m=0.4, scale=5.0)
    testing.check_grads_f64(lambda x: fn(x, labels), (logits,), order=2, modes=("fwd", "rev"))


def test_sample_size_is_the_keyword():
    logits, labels = np.zeros((2, 4), np.float32), np.array([0, 1])
    with pytest.raises(TypeError, match="n_samples"):
        jaxloss.balanced_noised_topk_loss(
            logits, labels, k=1, epsilon=1.0, n_samples=3, key=jax.random.key(0)
        )


_CLASS_SPLIT_CODE = """
import functools
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import jaxloss

rng = np.random.default_rng(0)
logits = (0.5 * rng.standard_normal((4, 8))).astype(np.float32)
labels = np.array([0, 3, 5, 7])
where = rng.random((4, 8)) > 0.2
counts = np.array([30.0, 12.0, 40.0, 25.0, 9.0, 18.0, 50.0, 4.0], np.float32)  # rarest: shard 3
key = jax.random.key(3)
mesh = Mesh(np.array(jax.devices()).reshape(1, 4), ("data", "model"))
losses = {
    "balanced": lambda z, y, w, c, **o: jaxloss.balanced_noised_topk_loss(
        z, y, k=2, epsilon=0.5, key=key, where=w, **o),
    "imbalanced": lambda z, y, w, c, **o: jaxloss.imbalanced_noised_topk_loss(
        z, y, class_counts=c, k=2, epsilon=0.5, max_m=0.4, scale=2.0, key=key, where=w, **o),
    "ldam": lambda z, y, w, c, **o: jaxloss.ldam_loss(
        z, y, class_counts=c, max_m=0.4, scale=3.0, where=w, **o),
}
for name, loss in losses.items():
    split = jax.shard_map(
        functools.partial(loss, class_axis_name="model"),
        mesh=mesh,
        in_specs=(P("data", "model"), P("data"), P("data", "model"), P("model")),
        out_specs=P("data"),
    )

    def results(fn):
        grad = jax.grad(lambda *a: jnp.sum(fn(*a)))
        return jax.jit(lambda *a: (fn(*a), grad(*a)))(logits, labels, where, counts)

    (want, want_grad), (got, got_grad) = results(loss), results(split)
    assert np.count_nonzero(want) >= 2, name
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-7, err_msg=name)
    if name != "balanced":  # the whole count vector on each device, not its block of classes
        whole_counts = jax.shard_map(
            functools.partial(loss, class_axis_name="model"),
            mesh=mesh,
            in_specs=(P("data", "model"), P("data"), P("data", "model"), P()),
            out_specs=P("data"),
        )
        try:
            jax.eval_shape(whole_counts, logits, labels, where, counts)
            raise AssertionError(name)
        except ValueError as error:
            assert "class_counts must be this device's block" in str(error), error
            assert "shape (2,) for the 2 classes" in str(error), error
print("ok")
"""


def test_split_classes_match_whole_rows():
    # Inside shard_map with the classes (and the counts, and the mask) split 4 ways: the key's
    # draws, the rarest class's margin and the label's entries are those of the whole rows.
    assert testing.run_on_devices(_CLASS_SPLIT_CODE, num_devices=4).split() == ["ok"]
