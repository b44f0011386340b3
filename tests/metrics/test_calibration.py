"""ECE, its streaming bins and the reliability diagram, against a float64 NumPy brute force."""

import fractions
import functools

import chex
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

from jaxloss import metrics
from tests import testing

matplotlib.use("Agg")


def exact_bin(confidence, n_bins):
    """The documented rule with exact rational arithmetic: bin b holds [b/n, (b+1)/n)."""
    value = fractions.Fraction(float(confidence))
    for b in range(n_bins - 1, 0, -1):
        edge_in_dtype = fractions.Fraction(float(np.asarray(b / n_bins, confidence.dtype)))
        if value >= edge_in_dtype:
            return b
    return 0


def ece_reference(probs, labels, n_bins, mask=None):
    """Per-bin means and the weighted gap, by loops in float64."""
    probs = np.asarray(probs)
    if mask is None:
        mask = np.ones(labels.shape, bool)
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    bins = np.array([exact_bin(c, n_bins) for c in confidence.ravel()]).reshape(labels.shape)
    total, ece = mask.sum(), 0.0
    for b in range(n_bins):
        chosen = mask & (bins == b)
        if chosen.any():
            gap = np.mean(correct[chosen]) - np.mean(confidence[chosen].astype(np.float64))
            ece += chosen.sum() / total * abs(gap)
    return ece


def random_probs(seed, shape, dtype=np.float32):
    return np.asarray(jax.nn.softmax(testing.random_logits(seed, shape, scale=2.0), -1), dtype)


@pytest.mark.parametrize("n_bins", [1, 15])
def test_ece_matches_brute_force(n_bins):
    probs = random_probs(0, (500, 6))
    labels = testing.random_labels(0, (500,), 6)
    got = metrics.expected_calibration_error(probs, labels, n_bins=n_bins)
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, ece_reference(probs, labels, n_bins), rtol=1e-5, atol=1e-7)


def test_ece_float64_matches_brute_force_with_mask_and_class_axis():
    probs = random_probs(1, (40, 5, 7), np.float64)
    labels = testing.random_labels(1, (40, 7), 5)
    mask = np.random.default_rng(1).random((40, 7)) < 0.6
    with jax.enable_x64(True):
        got = metrics.expected_calibration_error(probs, labels, where=mask, axis=1)
        chex.assert_type(got, jnp.float64)
    want = ece_reference(np.moveaxis(probs, 1, -1), labels, 15, mask)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def edge_probs(confidences, dtype):
    """Two-class rows whose top probability is the given confidence and whose label is class 0."""
    confidences = np.asarray(confidences, dtype)
    return np.stack([confidences, np.zeros_like(confidences)], -1)


def next_below(value):
    """The largest float of the same dtype below a positive ``value`` (bit pattern minus one)."""
    value = np.asarray(value)
    unsigned = np.dtype(f"uint{8 * value.dtype.itemsize}")
    return (value.view(unsigned) - unsigned.type(1)).view(value.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.bfloat16])
@pytest.mark.parametrize("n_bins", [10, 15])
def test_bin_edges_follow_the_documented_rule(dtype, n_bins):
    edges = [np.asarray(b / n_bins, dtype) for b in range(1, n_bins)]
    confidences = np.array([*edges, *map(next_below, edges), 1.0, 0.0], dtype)
    want = [*range(1, n_bins), *range(n_bins - 1), n_bins - 1, 0]
    assert [exact_bin(c, n_bins) for c in confidences] == want  # the oracle agrees with the rule
    with jax.enable_x64(dtype == np.float64):
        probs = jnp.asarray(edge_probs(confidences, dtype))
        chex.assert_type(probs, dtype)
        bins = metrics.calibration_bins(probs, jnp.zeros(len(want), int), n_bins=n_bins)
    np.testing.assert_array_equal(bins.count, np.bincount(want, minlength=n_bins))


@pytest.mark.parametrize("n_bins", [10, 11, 20, 22])
def test_float32_near_edges_where_floor_of_product_misplaces(n_bins):
    # floor(conf * n) misplaces some float32 values within two ulps of an edge: in float32 the
    # product can round up to b, and in float64 the float32 edge itself (below b/n) lands in b - 1.
    step = np.uint32(1)
    near = []
    for b in range(1, n_bins):
        edge = np.float32(b / n_bins)
        near += [edge, next_below(edge), next_below(next_below(edge))]
        near += [(edge.view(np.uint32) + step).view(np.float32)]
    near = np.array(near, np.float32)
    want = np.array([exact_bin(c, n_bins) for c in near])
    floor32 = np.floor(near * np.float32(n_bins)).astype(int)
    floor64 = np.floor(near.astype(np.float64) * n_bins).astype(int)
    assert np.any((floor32 != want) | (floor64 != want)), "no value that floor misplaces"
    bins = metrics.calibration_bins(
        edge_probs(near, np.float32), np.zeros(len(near), int), n_bins=n_bins
    )
    np.testing.assert_array_equal(bins.count, np.bincount(want, minlength=n_bins))


def test_empty_bins_contribute_nothing_and_no_examples_is_nan():
    probs = edge_probs([0.95, 0.95, 0.55], np.float32)
    labels = np.array([0, 1, 0])
    bins = metrics.calibration_bins(probs, labels, n_bins=10)
    np.testing.assert_array_equal(bins.count, [0, 0, 0, 0, 0, 1, 0, 0, 0, 2])
    want = (abs(0.5 - 0.95) * 2 + abs(1 - 0.55)) / 3
    np.testing.assert_allclose(metrics.ece_from_bins(bins), want, rtol=1e-6)
    empty = metrics.expected_calibration_error(probs, labels, where=np.zeros(3, bool))
    assert np.isnan(empty)


def test_argmax_ties_take_the_first_class():
    probs = np.array([[0.5, 0.5], [0.5, 0.5]], np.float32)
    bins = metrics.calibration_bins(probs, np.array([0, 1]), n_bins=4)
    np.testing.assert_array_equal(bins.correct_sum, [0, 0, 1, 0])


def test_streaming_merge_over_batches_is_exact():
    # Confidences on a 1/256 grid make every float sum exact, so any order of merging must agree
    # to the last bit.
    rng = np.random.default_rng(2)
    top = rng.integers(64, 257, size=240) / 256
    probs = np.stack([top, 1 - top], -1).astype(np.float32)
    labels = rng.integers(0, 2, size=240)
    mask = rng.random(240) < 0.9
    whole = metrics.calibration_bins(probs, labels, where=mask)
    step = jax.jit(metrics.calibration_bins)
    merged = functools.reduce(
        metrics.CalibrationBins.merge,
        [
            step(probs[i : i + 48], labels[i : i + 48], where=mask[i : i + 48])
            for i in range(0, 240, 48)
        ],
    )
    chex.assert_trees_all_equal(merged, whole)
    chex.assert_trees_all_equal(metrics.ece_from_bins(merged), metrics.ece_from_bins(whole))
    np.testing.assert_allclose(
        metrics.ece_from_bins(whole), ece_reference(probs, labels, 15, mask), rtol=1e-6
    )


def test_streaming_merge_with_random_confidences():
    probs = random_probs(3, (300, 10))
    labels = testing.random_labels(3, (300,), 10)
    parts = [
        metrics.calibration_bins(probs[i : i + 100], labels[i : i + 100]) for i in (0, 100, 200)
    ]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    whole = metrics.calibration_bins(probs, labels)
    chex.assert_trees_all_equal(merged.count, whole.count)
    chex.assert_trees_all_equal(merged.correct_sum, whole.correct_sum)
    np.testing.assert_allclose(merged.confidence_sum, whole.confidence_sum, rtol=1e-6)
    chex.assert_type([merged.count, merged.correct_sum], jnp.int32)


def test_calibration_bins_vmap_and_jit():
    probs = random_probs(4, (3, 50, 4))
    labels = testing.random_labels(4, (3, 50), 4)
    batched = jax.vmap(functools.partial(metrics.calibration_bins, n_bins=5))(probs, labels)
    chex.assert_shape(batched.count, (3, 5))
    ece = jax.vmap(metrics.ece_from_bins)(batched)
    want = [ece_reference(p, y, 5) for p, y in zip(probs, labels, strict=True)]
    np.testing.assert_allclose(ece, want, rtol=1e-5)
    jitted = jax.jit(functools.partial(metrics.expected_calibration_error, n_bins=5))
    np.testing.assert_allclose(jitted(probs[0], labels[0]), want[0], rtol=1e-5)


def test_psum_of_bins_over_four_devices_equals_the_whole():
    out = testing.run_on_devices(
        """
        import functools
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, PartitionSpec as P
        from jaxloss import metrics
        assert jax.device_count() == 4
        rng = np.random.default_rng(5)
        top = rng.integers(64, 257, size=(4, 32)) / 256
        probs = np.stack([top, 1 - top], -1).astype(np.float32)
        labels = rng.integers(0, 2, size=(4, 32))
        mask = rng.random((4, 32)) < 0.8
        mesh = Mesh(np.array(jax.devices()), ("data",))

        @jax.jit
        @functools.partial(
            jax.shard_map, mesh=mesh, in_specs=P("data"), out_specs=P(), check_vma=False
        )
        def sharded(p, y, m):
            bins = metrics.calibration_bins(p[0], y[0], where=m[0])
            return jax.lax.psum(bins, "data")

        got = sharded(probs, labels, mask)
        want = metrics.calibration_bins(probs, labels, where=mask)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        pmapped = jax.pmap(
            lambda p, y, m: jax.lax.psum(metrics.calibration_bins(p, y, where=m), "i"),
            axis_name="i",
        )(probs, labels, mask)
        for a, b in zip(pmapped, want):
            np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b))
        print("ok", float(metrics.ece_from_bins(got)))
        """
    )
    assert out.startswith("ok")


def test_reliability_diagram_bars_and_legend():
    probs = random_probs(6, (200, 3))
    labels = testing.random_labels(6, (200,), 3)
    figure = metrics.reliability_diagram(probs, labels, n_bins=12, title="test")
    ax = figure.axes[0]
    bars, gaps = ax.containers
    assert len(bars) == 12
    nonempty = np.asarray(metrics.calibration_bins(probs, labels, n_bins=12).count) > 0
    assert len(gaps) == nonempty.sum()
    bins = metrics.calibration_bins(probs, labels, n_bins=12)
    accuracy = np.asarray(bins.correct_sum) / np.maximum(np.asarray(bins.count), 1)
    np.testing.assert_allclose([bar.get_height() for bar in bars], accuracy, rtol=1e-6)
    ece = float(metrics.ece_from_bins(bins))
    assert any(f"{ece:.4f}" in text.get_text() for text in ax.get_legend().get_texts())
    assert ax.get_title() == "test"


def test_reliability_diagram_from_bins_on_given_axes():
    from matplotlib import pyplot as plt

    probs = random_probs(7, (100, 3))
    labels = testing.random_labels(7, (100,), 3)
    bins = metrics.calibration_bins(probs, labels, n_bins=8)
    figure, ax = plt.subplots()
    try:
        assert metrics.reliability_diagram(bins, ax=ax) is figure
        assert len(ax.containers[0]) == 8
        metrics.reliability_diagram(bins, ax=ax, ece=0.1234, ece_label="mean over 3 seeds")
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("ECE = 0.1234, mean over 3 seeds" in t for t in texts)
        with pytest.raises(ValueError, match="labels must be None"):
            metrics.reliability_diagram(bins, labels)
        with pytest.raises(ValueError, match="labels are required"):
            metrics.reliability_diagram(probs)
    finally:
        plt.close(figure)


def test_calibration_rejects_bad_inputs():
    probs = random_probs(8, (4, 3))
    labels = np.zeros(4, int)
    with pytest.raises(ValueError, match="n_bins must be in"):
        metrics.expected_calibration_error(probs, labels, n_bins=0)
    with pytest.raises(TypeError, match="n_bins must be a Python int"):
        metrics.calibration_bins(probs, labels, n_bins=15.0)
    with pytest.raises(ValueError, match="labels must have the logits' shape"):
        metrics.calibration_bins(probs, np.zeros(5, int))
    with pytest.raises(TypeError, match="floating-point"):
        metrics.calibration_bins(np.zeros((4, 3), int), labels)
    with pytest.raises(ValueError, match="does not broadcast"):
        metrics.calibration_bins(probs, labels, where=np.ones(3, bool))
