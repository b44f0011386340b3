"""Misuse is refused before any work, and nothing is ever silently wrong (issue 20, the losses).

Each case here once gave a wrong number, a NaN, an infinite value or a raw traceback:

- ``jaxloss.checked`` inside ``shard_map`` checks labels against the classes of whole rows;
- ``class_axis_name`` is verified against the types inside ``shard_map`` (``check_vma``): logits
  replicated over the axis, labels varying over it, per-class vectors whole or replicated where a
  block belongs are refused by name; with ``check_vma=False`` the shapes still are;
- a label outside ``[0, C)`` gives NaN, whole rows or split (the NaN stop can fire);
- an empty batch gives shape ``(0,)`` for every loss and the metrics' empty results (optax);
- infinite hyperparameters are refused, at trace time and by ``checked``; a temperature below
  the smallest normal number gives the hard limit; EXACT's number of draws is bounded;
- a tuple ``axis`` flattens the classes in the order given (optax); the focal loss's Hessian is
  finite where 1 - p_y is tiny.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import jaxloss
from jaxloss import metrics
from tests import testing

NAMES = jaxloss.available_losses()
CLASSES = 8

# ---------------------------------------------------------------------------------------------
# Inside shard_map: one 4-device subprocess runs every case and reports; each is a test below.

_CODE = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from jax.experimental import checkify
import jaxloss
from tests import testing

assert jax.device_count() == 4
C = 8
model = Mesh(np.array(jax.devices()), ("model",))
grid = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
rng = np.random.default_rng(0)
z = jnp.asarray(2 * rng.standard_normal((4, C)), jnp.float32)
counts = jnp.arange(1.0, C + 1)
results = {}


def outcome(fn, *args):
    try:
        out = fn(*args)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return np.asarray(out).tolist()


def poly1(check_vma=True, mesh=model, z_spec=P(None, "model"), y_spec=P(), name="model"):
    return jax.jit(jax.shard_map(
        lambda z, y: jaxloss.poly1_loss(z, y, class_axis_name=name),
        mesh=mesh, in_specs=(z_spec, y_spec), out_specs=P(), check_vma=check_vma))


def balanced(counts_spec, check_vma=True):
    return jax.jit(jax.shard_map(
        lambda z, y, n: jaxloss.balanced_softmax_loss(
            z, y, class_counts=n, class_axis_name="model"),
        mesh=model, in_specs=(P(None, "model"), P(), counts_spec), out_specs=P(),
        check_vma=check_vma))


y = jnp.array([5, 7, 0, 2])
# Item 5: checked reads the global class count (valid labels up to 7 pass, 9 is named).
checked = jax.jit(checkify.checkify(jax.shard_map(
    lambda z, y: jaxloss.checked(jaxloss.poly1_loss)(z, y, class_axis_name="model"),
    mesh=model, in_specs=(P(None, "model"), P()), out_specs=P()), errors=checkify.user_checks))
error, value = checked(z, y)
results["checked/valid"] = [error.get(), np.asarray(value).tolist()]
results["checked/reference"] = np.asarray(jaxloss.poly1_loss(z, y)).tolist()
error, _ = checked(z, jnp.array([5, 9, 0, 2]))
results["checked/invalid"] = error.get()

# Item 6: misuse of the class axis.
results["axis/correct"] = outcome(poly1(), z, y)
results["axis/correct_unchecked"] = outcome(poly1(check_vma=False), z, y)
results["axis/replicated_logits"] = outcome(poly1(z_spec=P()), jnp.tile(z, (1, 1)), y)
results["axis/labels_vary"] = outcome(
    poly1(mesh=grid, z_spec=P("data", "model"), y_spec=P("data"), name="data"), z, y)
results["axis/whole_counts"] = outcome(balanced(P()), z, y, counts)
results["axis/whole_counts_unchecked"] = outcome(balanced(P(), check_vma=False), z, y, counts)
results["axis/replicated_block"] = outcome(balanced(P()), z, y, counts[:2])
results["axis/block"] = outcome(balanced(P("model")), z, y, counts)
results["axis/reference"] = np.asarray(
    jaxloss.balanced_softmax_loss(z, y, class_counts=counts)).tolist()

# Item 7: out-of-range labels give NaN, split as whole, for every loss.
bad = jnp.array([-1, C, 0, 3])
for name in jaxloss.available_losses():
    spec = jaxloss.loss_spec(name)
    kwargs = spec.hyperparameters()
    kwargs.update({"k": 2} if "k" in kwargs else {})
    if spec.reproducible is not None:
        kwargs.update(spec.reproducible(z.shape, np.random.default_rng(1), kwargs))
    arrays, specs = {}, {}
    if spec.needs_class_counts:
        arrays["class_counts"], specs["class_counts"] = counts, P("model")
    if kwargs.get("noise") is not None:
        arrays["noise"], specs["noise"] = kwargs.pop("noise"), P(None, "model", None)
    one = spec.fn(z, bad, **kwargs, **arrays)
    split = jax.jit(jax.shard_map(
        lambda z, y, a: spec.fn(z, y, **kwargs, **a, class_axis_name="model"),
        mesh=model, in_specs=(P(None, "model"), P(), specs), out_specs=P()))(z, bad, arrays)
    results[f"labels/{name}"] = [np.asarray(one).tolist(), np.asarray(split).tolist()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def sharded() -> dict:
    out = testing.run_on_devices(_CODE, num_devices=4)
    return json.loads(out.strip().splitlines()[-1])


def test_checked_under_shard_map_checks_labels_against_the_global_classes(sharded):
    error, value = sharded["checked/valid"]
    assert error is None
    np.testing.assert_allclose(value, sharded["checked/reference"], rtol=1e-6)
    assert "labels must be in [0, 8); got a label of 9" in sharded["checked/invalid"]


def test_correct_class_split_is_accepted_with_and_without_check_vma(sharded):
    reference = sharded["checked/reference"]
    np.testing.assert_allclose(sharded["axis/correct"], reference, rtol=1e-6)
    np.testing.assert_allclose(sharded["axis/correct_unchecked"], reference, rtol=1e-6)
    np.testing.assert_allclose(sharded["axis/block"], sharded["axis/reference"], rtol=1e-6)


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "replicated_logits",
            r"ValueError: class_axis_name='model': the logits do not vary over mesh axis 'model'",
        ),
        (
            "labels_vary",
            r"ValueError: class_axis_name='data': the labels vary over mesh axis 'data'.*"
            r"is 'data' the batch axis\?",
        ),
        (
            "whole_counts",
            r"ValueError: class_counts must be this device's block of the per-class vector under "
            r"class_axis_name='model': shape \(2,\).*got shape \(8,\), the whole vector of 8",
        ),
        (
            "whole_counts_unchecked",
            r"ValueError: class_counts must be this device's block.*the whole vector of 8",
        ),
        (
            "replicated_block",
            r"ValueError: class_counts must be this device's block.*does not vary",
        ),
    ],
)
def test_class_axis_misuse_is_refused_naming_class_axis_name(sharded, case, message):
    assert isinstance(sharded[f"axis/{case}"], str), sharded[f"axis/{case}"]
    assert re.match(message, sharded[f"axis/{case}"]), sharded[f"axis/{case}"]


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_labels_give_nan_split_as_whole(sharded, name):
    one, split = (np.asarray(v, np.float64) for v in sharded[f"labels/{name}"])
    np.testing.assert_array_equal(np.isnan(one), [True, True, False, False])
    np.testing.assert_array_equal(np.isnan(split), [True, True, False, False])
    np.testing.assert_allclose(split[2:], one[2:], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Empty batches.


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_shape_zero_and_an_empty_gradient(name):
    call = testing.spec_call(jaxloss.loss_spec(name), num_classes=CLASSES)
    logits, labels = jnp.zeros((0, CLASSES)), jnp.zeros((0,), jnp.int32)
    value, grad = jax.value_and_grad(lambda z: call(z, labels).sum())(logits)
    assert call(logits, labels).shape == (0,)
    assert float(value) == 0.0 and grad.shape == (0, CLASSES)
    assert jaxloss.checked(call)(logits, labels).shape == (0,)


def test_empty_batch_gives_the_metrics_empty_results():
    logits, labels = jnp.zeros((0, CLASSES)), jnp.zeros((0,), jnp.int32)
    assert metrics.topk_accuracy(logits, labels, k=2).shape == (0,)
    assert np.isnan(metrics.macro_topk_accuracy(logits, labels, k=2, num_classes=CLASSES))
    assert np.isnan(metrics.balanced_accuracy(labels, labels, num_classes=CLASSES))
    assert np.isnan(metrics.per_class_recall(labels, labels, num_classes=CLASSES)).all()
    assert np.isnan(metrics.expected_calibration_error(logits, labels))
    bins = metrics.calibration_bins(logits, labels, n_bins=4)
    np.testing.assert_array_equal(bins.count, 0)
    np.testing.assert_array_equal(bins.correct_sum, 0)


# ---------------------------------------------------------------------------------------------
# Hyperparameters at their extremes.

# Where +inf means something: no clip of EXACT's differences, no switch to the hard loss.
INF_MEANS_NONE = {("exact", "margin"), ("smooth_topk_svm", "hard_threshold")}
RANGED = [(name, h) for name in NAMES for h in jaxloss.loss_spec(name).ranges]


def _inputs(seed=0):
    logits = jnp.asarray(testing.random_logits(seed, (4, CLASSES), scale=2.0), jnp.float32)
    return logits, jnp.asarray(testing.random_labels(seed, (4,), CLASSES))


def _reproducible_call(name, shape=(4, CLASSES)):
    """The spec's call for logits of ``shape`` (classes last), its noise injected if it has any."""
    spec = jaxloss.loss_spec(name)
    call = testing.spec_call(spec, num_classes=shape[-1])
    extra = {}
    if spec.reproducible is not None:
        hyperparameters = {**spec.hyperparameters(), "k": 2}
        extra = spec.reproducible(shape, np.random.default_rng(0), hyperparameters)
    return lambda z, y, **kwargs: call(z, y, **extra, **kwargs)


@pytest.mark.parametrize("name, hyperparameter", RANGED)
def test_infinite_hyperparameters_are_refused_at_trace_time_and_by_checked(name, hyperparameter):
    call = _reproducible_call(name)
    logits, labels = _inputs()
    if (name, hyperparameter) in INF_MEANS_NONE:
        np.testing.assert_allclose(
            call(logits, labels, **{hyperparameter: np.inf}),
            call(logits, labels, **{hyperparameter: None}),
            rtol=1e-6,
        )
        return
    with pytest.raises(ValueError, match=rf"{hyperparameter} must be in .* got inf"):
        call(logits, labels, **{hyperparameter: np.inf})
    safe = jax.jit(checkify.checkify(jaxloss.checked(call), errors=checkify.user_checks))
    error, _ = safe(logits, labels, **{hyperparameter: jnp.float32(np.inf)})
    assert error.get() is not None and f"{hyperparameter} must be in" in error.get()


@pytest.mark.parametrize("hard_threshold", [1e3, None])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_subnormal_temperature_gives_the_hard_top_k_loss(k, hard_threshold):
    logits, labels = _inputs(1)
    hard = jaxloss.topk_svm_loss(logits, labels, k=k)
    for tau in (1e-38, 1e-45):  # the smallest normal float32 is 1.2e-38; 1e-45 is subnormal

        def smooth(z, tau=tau):
            return jaxloss.smooth_topk_svm_loss(
                z, labels, k=k, tau=tau, hard_threshold=hard_threshold
            )

        np.testing.assert_allclose(smooth(logits), hard, rtol=1e-6, atol=1e-6)
        grad = jax.grad(lambda z: smooth(z).sum())(logits)
        np.testing.assert_allclose(
            grad, jax.grad(lambda z: jaxloss.topk_svm_loss(z, labels, k=k).sum())(logits)
        )


def test_exact_refuses_more_draws_than_one_call_supports():
    logits, labels = jnp.zeros((64, 100)), jnp.zeros((64,), jnp.int32)
    with pytest.raises(ValueError, match=r"sample_size=1000000000: exact_loss would draw "):
        jaxloss.exact_loss(logits, labels, key=jax.random.key(0), sample_size=10**9)
    # The same size is fine where nothing is drawn.
    loss = jaxloss.exact_loss(logits, labels, method="quadrature", sample_size=10**9)
    assert loss.shape == (64,)


# ---------------------------------------------------------------------------------------------
# optax's conventions: the order of a tuple axis, the focal loss's Hessian.

AXES = [(3, 2), (-1, -2), (2, 3), (1, 3)]


def _flatten_in_order(z: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """optax's tuple axis, in NumPy: the class axes moved last in the order given, flattened."""
    axes = tuple(a % z.ndim for a in axes)
    batch = tuple(a for a in range(z.ndim) if a not in axes)
    moved = np.transpose(z, batch + axes)
    return moved.reshape(moved.shape[: len(batch)] + (-1,))


@pytest.mark.parametrize("axes", AXES)
def test_tuple_axis_flattens_in_the_given_order_as_optax(axes):
    z = testing.random_logits(2, (2, 3, 4, 5), dtype=np.float32)
    batch = [n for a, n in enumerate(z.shape) if a not in {x % 4 for x in axes}]
    num_classes = z.size // int(np.prod(batch))
    y = jnp.asarray(testing.random_labels(2, tuple(batch), num_classes))
    cross_entropy = jaxloss.loss_spec("cross_entropy").fn
    np.testing.assert_allclose(
        cross_entropy(jnp.asarray(z), y, axis=axes),
        optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(z), y, axis=axes),
        rtol=1e-6,
    )
    flat = jnp.asarray(_flatten_in_order(z, axes))
    for name in NAMES:
        call = _reproducible_call(name, flat.shape)
        try:
            got = call(jnp.asarray(z), y, axis=axes)
        except ValueError as error:
            assert "this function takes one class axis" in str(error), (name, error)
            continue
        np.testing.assert_allclose(got, call(flat, y), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("lead", [3.0, 45.0, 50.0, 60.0, 80.0, 87.0])
def test_focal_hessian_is_finite_and_matches_optax_in_float64(lead, gamma):
    def focal(z):
        return jaxloss.softmax_focal_loss(z[None], jnp.array([1]), gamma=gamma)[0]

    hessian = np.asarray(jax.hessian(focal)(jnp.array([0.0, lead], jnp.float32)))
    assert np.all(np.isfinite(hessian))
    # Two classes: the loss is optax's sigmoid focal loss of u = z_1 - z_0, label 1.
    with jax.enable_x64(True):
        second = jax.grad(jax.grad(lambda u: optax.losses.sigmoid_focal_loss(u, 1.0, gamma=gamma)))(
            jnp.float64(lead)
        )
    want = float(second) * np.array([[1.0, -1.0], [-1.0, 1.0]])
    np.testing.assert_allclose(hessian, want, rtol=2e-3, atol=float(np.finfo(np.float32).tiny))
