"""Smooth and hard top-k SVM losses against k-subset enumeration, limits and the switch."""

import functools
import itertools
import json

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
    # The switched row's gradient is the hard loss's: +1/k at the k-th other class, -1/k at the
    # label (the k-th score comes from the selection's x = s / (k tau), whose gradient it keeps).
    for tau in (1.0, 0.3):
        _, grad = value_and_grad(jnp.asarray(logits), labels, k=2, tau=tau, hard_threshold=100.0)
        hard_grad = jax.grad(lambda x: jaxloss.topk_svm_loss(x, labels, k=2)[0])(logits)
        np.testing.assert_allclose(grad[0], hard_grad[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(grad[0], [0.0, 0.5, -0.5, 0.0, 0.0], rtol=1e-6, atol=1e-7)


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


def test_k_is_a_required_keyword():
    logits, labels = jnp.zeros((2, 5)), jnp.array([0, 1])
    for loss in (jaxloss.topk_svm_loss, jaxloss.smooth_topk_svm_loss):
        with pytest.raises(TypeError, match="'k'"):
            loss(logits, labels)


def _kept_row(scores, label, keep):
    """The label's score followed by the kept competitors: the oracles' view of a masked row."""
    others = [j for j in range(len(scores)) if keep[j] and j != label]
    return np.concatenate([[scores[label]], scores[others]])


def test_masked_label_and_rows_short_of_competitors():
    logits = testing.random_logits(8, (4, 7), scale=2.0)
    labels = np.array([1, 4, 0, 6])
    keep = np.ones((4, 7), bool)
    keep[0, 1] = False  # the label's own class: its score still counts, as in optax
    keep[1, [0, 2, 3, 5]] = False  # exactly k = 2 competitors left
    keep[2, 1:6] = False  # one competitor, fewer than k: loss 0
    keep[3] = False  # nothing left: loss 0
    k, tau, alpha = 2, 0.7, 1.0
    rows = [_kept_row(s, y, w) for s, y, w in zip(logits, labels, keep, strict=True)]
    want_smooth = [brute_smooth(r[None], [0], k, alpha, tau)[0] for r in rows[:2]] + [0.0, 0.0]
    want_hard = [brute_hard(r[None], [0], k, alpha)[0] for r in rows[:2]] + [0.0, 0.0]
    testing.assert_matches_oracle(
        lambda x, y: jaxloss.smooth_topk_svm_loss(
            x, y, k=k, tau=tau, alpha=alpha, hard_threshold=None, where=keep
        ),
        lambda x, y: want_smooth,
        logits,
        labels,
    )
    testing.assert_matches_oracle(
        lambda x, y: jaxloss.topk_svm_loss(x, y, k=k, alpha=alpha, where=keep),
        lambda x, y: want_hard,
        logits,
        labels,
    )
    for loss in (jaxloss.topk_svm_loss, jaxloss.smooth_topk_svm_loss):
        grad = jax.grad(lambda x, loss=loss: jnp.sum(loss(x, labels, k=k, where=keep)))(
            jnp.asarray(logits, jnp.float32)
        )
        np.testing.assert_array_equal(grad[2:], 0.0)
        np.testing.assert_array_equal(
            np.asarray(grad)[~keep & (np.arange(7) != labels[:, None])], 0
        )
        assert np.all(np.isfinite(grad))


def test_exactly_k_competitors_spread_beyond_the_floors_reach():
    # Scores 1e4 apart at tau = 1e-6 are 5e9 apart in x = s / (k tau), where the floor's 200 below
    # the lowest competitor is under an ulp: the k-th competitor must still count as one (the hard
    # loss, not the 0 of a row short of competitors), with the masked classes below it.
    logits = np.array([[0.0, -2e4, 5.0, -1e4], [0.0, -2e4, -1e4, 5.0]], np.float32)
    labels = np.array([1, 1])
    keep = np.array([[True, True, False, True], [True, True, True, True]])
    for tau in (1e-6, 1.0):
        out = jaxloss.smooth_topk_svm_loss(logits, labels, k=2, tau=tau, where=keep)
        # k = 2 competitors in row 0 ({0, 3}), three in row 1: the 2nd is -1e4 and 0 in turn.
        np.testing.assert_allclose(out, [1.0 + (-1e4 + 2e4) / 2, 1.0 + (0.0 + 2e4) / 2])


def test_nan_competitor_found_by_the_selection():
    # For k >= 2 a NaN competitor is found in log_esf's top k + 1 (lax.top_k ranks NaN first),
    # not by a pass over the classes: whatever the row's other scores, mask or temperature.
    logits = testing.random_logits(31, (5, 40), scale=3.0, dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 4])
    keep = np.ones((5, 40), bool)
    logits[0, 39] = np.nan  # a competitor
    logits[1, 7], keep[1, 7] = np.nan, False  # masked: no competitor
    logits[2, 5], logits[2, 6] = np.nan, np.inf  # beside a +inf competitor
    logits[3, 1:], logits[3, 9] = -np.inf, np.nan  # fewer than k competitors besides it
    for tau, threshold in ((1.0, 1e3), (0.1, None), (1e-30, 1e3)):
        out = jaxloss.smooth_topk_svm_loss(
            logits, labels, k=3, tau=tau, hard_threshold=threshold, where=keep
        )
        np.testing.assert_array_equal(np.isnan(out), [True, False, True, True, False])


def test_nonfinite_logits():
    logits = testing.random_logits(9, (3, 6), scale=2.0, dtype=np.float32)
    labels = np.array([0, 1, 2])
    # A NaN anywhere among the competitors, even the smallest, makes the row NaN.
    smallest = np.argmin(np.where(np.arange(6) == labels[:, None], np.inf, logits), axis=1)
    poisoned = logits.copy()
    poisoned[1, smallest[1]] = np.nan
    for loss in (jaxloss.topk_svm_loss, jaxloss.smooth_topk_svm_loss):
        out = np.asarray(loss(poisoned, labels, k=2))
        assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2]]))
    # +inf takes the limit (NumPy's float64 sort is the oracle): a competitor at +inf is the first
    # other class, so the 2nd one decides for k = 2 and the loss is +inf for k = 1; at the label
    # the loss is 0. Row 2 keeps its finite scores.
    big = logits.copy()
    big[0, top_competitor(logits[0], labels[0])] = np.inf
    big[1, labels[1]] = np.inf
    for k in (1, 2):
        np.testing.assert_allclose(
            jaxloss.topk_svm_loss(big, labels, k=k), brute_hard(big, labels, k, 1.0), rtol=1e-6
        )
    smooth = np.asarray(jaxloss.smooth_topk_svm_loss(big, labels, k=2, hard_threshold=None))
    assert not np.isfinite(smooth[0]) and smooth[1] == 0.0


def top_competitor(scores, label):
    return np.argmax(np.where(np.arange(len(scores)) == label, -np.inf, scores))


def test_traced_hyperparameters_equal_a_loop():
    # Row gaps (2nd to 3rd score) are 10 and 0.5: the thresholds switch none, one or both rows.
    logits = np.array([[12.0, 11.0, 1.0, 0.5, 0.0], [2.0, 1.0, 0.5, 0.2, 0.0]], np.float32)
    labels = np.array([2, 3])
    thresholds = jnp.asarray([1.1, 100.0, 1e6], jnp.float32)
    taus = jnp.asarray([0.3, 1.0, 2.0], jnp.float32)

    def smooth(hard_threshold, tau, alpha):
        return jaxloss.smooth_topk_svm_loss(
            logits, labels, k=2, tau=tau, alpha=alpha, hard_threshold=hard_threshold
        )

    switched = jax.jit(jax.vmap(lambda h: smooth(h, 1.0, 1.0)))(thresholds)
    hard = jaxloss.topk_svm_loss(logits, labels, k=2)
    pure = smooth(None, 1.0, 1.0)
    np.testing.assert_allclose(switched, [hard, [hard[0], pure[1]], pure], rtol=1e-6)
    for h, row in zip(thresholds, switched, strict=True):
        np.testing.assert_allclose(row, smooth(float(h), 1.0, 1.0), rtol=1e-6)
    mapped = jax.jit(jax.vmap(smooth))(thresholds, taus, 2 * taus)
    for h, t, row in zip(thresholds, taus, mapped, strict=True):
        np.testing.assert_allclose(row, smooth(float(h), float(t), 2 * float(t)), rtol=1e-6)
    alphas = jnp.asarray([0.0, 0.5, 3.0])
    np.testing.assert_allclose(
        jax.vmap(lambda a: jaxloss.topk_svm_loss(logits, labels, k=2, alpha=a))(alphas),
        [jaxloss.topk_svm_loss(logits, labels, k=2, alpha=float(a)) for a in alphas],
    )


def test_forward_mode_and_second_derivatives():
    logits = testing.random_logits(10, (3, 6), scale=1.0)
    labels = testing.random_labels(10, (3,), 6)

    def smooth(k):
        return lambda x: jaxloss.smooth_topk_svm_loss(x, labels, k=k, tau=0.8, hard_threshold=None)

    # k >= 2 goes through log_esf's custom VJP: reverse mode only, and the error names the loss.
    with pytest.raises(TypeError, match=r"jaxloss\.smooth_topk_svm_loss supports reverse-mode"):
        jax.jacfwd(smooth(3))(jnp.asarray(logits, jnp.float32))
    # ... but reverse over reverse gives second derivatives.
    testing.check_grads_f64(smooth(3), (logits,), order=2, modes=("rev",), eps=1e-5)
    # k = 1 (closed form) and the hard loss: forward mode and jax.hessian, checked against
    # finite differences in both modes.
    testing.check_grads_f64(smooth(1), (logits,), order=2, modes=("fwd", "rev"), eps=1e-5)
    hard = lambda x: jaxloss.topk_svm_loss(x, labels, k=2, alpha=3.0)  # noqa: E731
    testing.check_grads_f64(hard, (logits,), order=2, modes=("fwd", "rev"))
    hessian = jax.hessian(lambda x: jnp.sum(hard(x)))(jnp.asarray(logits, jnp.float32))
    np.testing.assert_array_equal(hessian, 0.0)


# Inside shard_map with the classes split over 4 devices (class_axis_name): the single-device
# values and gradients with k = 3, with and without the hard switch, with a class mask (rows short
# of competitors, a masked label, a -inf logit), for k = 1 and the hard loss, and in bfloat16.
_SHARDED_CODE = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import jaxloss

mesh = Mesh(np.array(jax.devices()).reshape(1, 4), ("data", "model"))
rng = np.random.default_rng(0)
batch, classes = 6, 16
z = 2 * rng.standard_normal((batch, classes))
z[0, [13, 2, 7]] = [40.0, 39.0, 38.0]  # far above the rest: the default switch takes row 0
z[5, 9] = -np.inf
z = jnp.asarray(z, jnp.float32)
y = jnp.asarray([1, 4, 10, 0, 6, 15])
keep = rng.random((batch, classes)) > 0.3
keep[1, 4] = False  # the label's own class: its score still counts
keep[2] = np.isin(np.arange(classes), [0, 6, 12])  # exactly k = 3 competitors, on 3 devices
keep[3] = np.isin(np.arange(classes), [5, 11])  # fewer than k: loss 0
keep[4] = False  # nothing left
keep[5] = True
keep = jnp.asarray(keep)

smooth, hard = jaxloss.smooth_topk_svm_loss, jaxloss.topk_svm_loss
CASES = {
    "smooth": lambda z, y, w, **o: smooth(z, y, k=3, tau=0.5, hard_threshold=None, **o),
    "smooth_switch": lambda z, y, w, **o: smooth(z, y, k=3, **o),
    "smooth_where": lambda z, y, w, **o: smooth(
        z, y, k=3, tau=0.5, hard_threshold=None, where=w, **o),
    "smooth_k1_where": lambda z, y, w, **o: smooth(z, y, k=1, where=w, **o),
    "hard_where": lambda z, y, w, **o: hard(z, y, k=3, where=w, **o),
    "smooth_bfloat16": lambda z, y, w, **o: smooth(z.astype(jnp.bfloat16), y, k=3, **o),
}
results = {}
for name, loss in CASES.items():
    split = jax.shard_map(
        lambda z, y, w: loss(z, y, w, class_axis_name="model"), mesh=mesh,
        in_specs=(P("data", "model"), P("data"), P("data", "model")), out_specs=P("data"))
    mean = lambda fn: jax.jit(jax.value_and_grad(lambda z, y, w: jnp.mean(fn(z, y, w))))
    want, got = mean(loss)(z, y, keep), mean(split)(z, y, keep)
    rtol = 1e-2 if "bfloat16" in name else 1e-5
    results[name] = [
        f"{what}: off by {float(np.abs(a - b).max())}"
        for what, a, b in zip(("value", "gradient"), got, want)
        if not np.allclose(a, b, rtol=rtol, atol=1e-7)
    ]
# The switch case takes the hard loss on row 0 and the smooth one elsewhere.
switched = CASES["smooth_switch"](z, y, keep)
if not (switched[0] == hard(z, y, k=3)[0] and switched[1] != hard(z, y, k=3)[1]):
    results["smooth_switch"].append("the switch does not split the rows as intended")
print(json.dumps(results))
"""

SHARDED_CASES = (
    "smooth",
    "smooth_switch",
    "smooth_where",
    "smooth_k1_where",
    "hard_where",
    "smooth_bfloat16",
)


@pytest.fixture(scope="module")
def sharded_failures() -> dict[str, list[str]]:
    out = testing.run_on_devices(_SHARDED_CODE, num_devices=4)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("case", SHARDED_CASES)
def test_classes_split_over_shard_map_devices_match_single_device(sharded_failures, case):
    found = sharded_failures[case]
    assert found == [], "\n".join(found)
