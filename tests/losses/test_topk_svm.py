"""Smooth and hard top-k SVM losses against k-subset enumeration, limits and the switch."""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import jaxloss
from tests import testing


def brute_smooth(scores, labels, k, alpha, tau):
    """The loss as the paper writes it: log-sum-exp over every k-subset (float64)."""
    out = []
    for s, y in zip(scores, labels, strict=True):
        all_terms, label_terms = [], []
        for subset in itertools.combinations(range(len(s)), k):
            mean = s[list(subset)].sum() / k
            all_terms.append((mean + (0.0 if y in subset else alpha)) / tau)
            if y in subset:
                label_terms.append(mean / tau)
        out.append(tau * (logsumexp(all_terms) - logsumexp(label_terms)))
    return np.array(out)


def brute_hard(scores, labels, k, alpha):
    out = []
    for s, y in zip(scores, labels, strict=True):
        kth = np.sort(np.delete(s, y))[::-1][k - 1]
        out.append(max(0.0, alpha + (kth - s[y]) / k))
    return np.array(out)


@functools.partial(jax.jit, static_argnames=("k", "tau", "hard_threshold"))
def value_and_grad(logits, labels, *, k, tau, hard_threshold=None):
    def total(x):
        return jnp.sum(
            jaxloss.smooth_topk_svm_loss(x, labels, k=k, tau=tau, hard_threshold=hard_threshold)
        )

    per_example = jaxloss.smooth_topk_svm_loss(
        logits, labels, k=k, tau=tau, hard_threshold=hard_threshold
    )
    return per_example, jax.grad(total)(logits)


@pytest.mark.parametrize(
    "k,tau,alpha", [(1, 1.0, 1.0), (2, 0.5, 1.0), (3, 1.0, 0.0), (5, 2.0, 1.0)]
)
def test_smooth_matches_subset_enumeration(k, tau, alpha):
    logits = testing.random_logits(k, (4, 7), scale=2.0)
    labels = testing.random_labels(k, (4,), 7)
    testing.assert_matches_oracle(
        lambda x, y: jaxloss.smooth_topk_svm_loss(
            x, y, k=k, tau=tau, alpha=alpha, hard_threshold=None
        ),
        lambda x, y: brute_smooth(x, y, k, alpha, tau),
        logits,
        labels,
    )


@pytest.mark.parametrize("k", [1, 3])
def test_gradient_finite_differences(k):
    labels = testing.random_labels(2, (3,), 6)
    testing.check_grads_f64(
        lambda x: jaxloss.smooth_topk_svm_loss(x, labels, k=k, tau=0.7, hard_threshold=None),
        (testing.random_logits(2, (3, 6), scale=2.0),),
        eps=1e-5,
    )


def test_hard_matches_sorting():
    logits = testing.random_logits(3, (6, 8), scale=2.0)
    labels = testing.random_labels(3, (6,), 8)
    for k in (1, 3):
        testing.assert_matches_oracle(
            lambda x, y, k=k: jaxloss.topk_svm_loss(x, y, k=k, alpha=0.5),
            lambda x, y, k=k: brute_hard(x, y, k, 0.5),
            logits,
            labels,
        )
    grad = jax.grad(lambda x: jnp.sum(jaxloss.topk_svm_loss(x, labels, k=3, alpha=5.0)))(logits)
    # Every hinge is active with alpha = 5: +1/3 at the 3rd other class, -1/3 at the label.
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.sort(grad, -1)[:, [0, -1]], [[-1 / 3, 1 / 3]] * 6, rtol=1e-6)


def test_tau_to_zero_is_hard_and_k1_is_closed_form():
    logits = testing.random_logits(4, (5, 9), scale=3.0)
    labels = testing.random_labels(4, (5,), 9)
    with jax.enable_x64(True):
        for k in (1, 4):
            cold = jaxloss.smooth_topk_svm_loss(logits, labels, k=k, tau=1e-4, hard_threshold=None)
            np.testing.assert_allclose(cold, brute_hard(logits, labels, k, 1.0), atol=2e-3)
        # k = 1, alpha = 0, tau = 1 is the cross-entropy.
        ce = jaxloss.smooth_topk_svm_loss(logits, labels, k=1, alpha=0.0, hard_threshold=None)
        want = -jax.nn.log_softmax(logits)[np.arange(5), labels]
        np.testing.assert_allclose(ce, want, rtol=1e-12)


def test_shift_invariance_and_axis():
    logits = testing.random_logits(5, (4, 8), scale=2.0, dtype=np.float32)
    labels = testing.random_labels(5, (4,), 8)
    base, grad = value_and_grad(jnp.asarray(logits), labels, k=3, tau=0.5)
    shifted, grad_shifted = value_and_grad(jnp.asarray(logits + 1000.0), labels, k=3, tau=0.5)
    np.testing.assert_allclose(shifted, base, atol=2e-5)
    np.testing.assert_allclose(grad_shifted, grad, atol=2e-5)
    moved = jaxloss.smooth_topk_svm_loss(logits.T, labels, k=3, tau=0.5, axis=0)
    np.testing.assert_allclose(moved, base, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e2, 1e4])
@pytest.mark.parametrize("offset", [-1e3, 1e3])
def test_float32_stability_sweep(scale, offset):
    # Classes 0..5 are close together so that non-trivial gradients exist at every scale.
    rng = np.random.default_rng(11)
    logits = offset + scale * rng.standard_normal((4, 10))
    logits[:, :6] = offset + scale * (0.3 * rng.standard_normal((4, 6)))
    logits = logits.astype(np.float32)
    labels = np.array([0, 3, 7, 9])
    value, grad = value_and_grad(jnp.asarray(logits), labels, k=5, tau=1.0)
    chex.assert_tree_all_finite((value, grad))
    x64 = logits.astype(np.float64)
    want = brute_smooth(x64 - x64.max(-1, keepdims=True), labels, 5, 1.0, 1.0)
    np.testing.assert_allclose(value, want, rtol=2e-6, atol=5e-5)
    with jax.enable_x64(True):
        _, want_grad = value_and_grad(jnp.asarray(x64), labels, k=5, tau=1.0)
    np.testing.assert_allclose(grad, want_grad, atol=5e-5)


def test_hard_threshold_switch():
    # Row 0: gap between the 2nd and 3rd scores is 10 >= 2 * ln(100); row 1 is below the switch.
    logits = np.array([[12.0, 11.0, 1.0, 0.5, 0.0], [2.0, 1.0, 0.5, 0.2, 0.0]], np.float32)
    labels = np.array([2, 3])
    switched, _ = value_and_grad(jnp.asarray(logits), labels, k=2, tau=1.0, hard_threshold=100.0)
    smooth, _ = value_and_grad(jnp.asarray(logits), labels, k=2, tau=1.0)
    hard = jaxloss.topk_svm_loss(logits, labels, k=2)
    np.testing.assert_allclose(switched, [hard[0], smooth[1]], rtol=1e-6)
    assert abs(smooth[0] - hard[0]) > 1e-6  # the switch changed row 0
    # The label's own score counts in the gap: with label 0 the 2nd/3rd gap is still 10.
    moved, _ = value_and_grad(
        jnp.asarray(logits), np.array([0, 3]), k=2, tau=1.0, hard_threshold=100.0
    )
    np.testing.assert_allclose(moved[0], jaxloss.topk_svm_loss(logits, np.array([0, 3]), k=2)[0])


def test_where_excludes_classes():
    logits = testing.random_logits(6, (3, 9), scale=2.0, dtype=np.float32)
    labels = np.array([0, 2, 4])
    keep = np.ones(9, bool)
    keep[[5, 7]] = False
    got = jaxloss.smooth_topk_svm_loss(logits, labels, k=3, hard_threshold=None, where=keep)
    want = jaxloss.smooth_topk_svm_loss(logits[:, keep], labels, k=3, hard_threshold=None)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(jaxloss.smooth_topk_svm_loss(x, labels, k=3, where=keep)))(
        logits
    )
    assert np.all(grad[:, ~keep] == 0)
    hard = jaxloss.topk_svm_loss(logits, labels, k=3, where=keep)
    np.testing.assert_allclose(hard, jaxloss.topk_svm_loss(logits[:, keep], labels, k=3))


def test_dtypes_and_vmap():
    logits = testing.random_logits(7, (2, 3, 8), scale=2.0, dtype=np.float32)
    labels = testing.random_labels(7, (2, 3), 8)
    out = jaxloss.smooth_topk_svm_loss(jnp.asarray(logits, jnp.bfloat16), labels, k=2)
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 3)
    mapped = jax.vmap(lambda x, y: jaxloss.smooth_topk_svm_loss(x, y, k=2))(logits, labels)
    np.testing.assert_allclose(mapped, jaxloss.smooth_topk_svm_loss(logits, labels, k=2), rtol=1e-6)


def test_bad_inputs():
    logits, labels = jnp.zeros((2, 5)), jnp.array([0, 1])
    with pytest.raises(ValueError, match="needs at least 6"):
        jaxloss.smooth_topk_svm_loss(logits, labels, k=5)
    with pytest.raises(ValueError, match="tau must be in"):
        jaxloss.smooth_topk_svm_loss(logits, labels, k=2, tau=0.0)
    with pytest.raises(ValueError, match="alpha must be in"):
        jaxloss.smooth_topk_svm_loss(logits, labels, k=2, alpha=-1.0)
    with pytest.raises(ValueError, match="hard_threshold must be in"):
        jaxloss.smooth_topk_svm_loss(logits, labels, k=2, hard_threshold=0.5)
    with pytest.raises(ValueError, match="needs at least 6"):
        jaxloss.topk_svm_loss(logits, labels, k=5)
