"""The loss registry: every loss reachable by name, uniform calls, clear errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss.training import train as train_lib
from jaxloss.training.mesh import make_mesh
from jaxloss.training.population import make_population
from tests import testing
from tests.training.tiny import digits, tiny_config

NUM_CLASSES = 10
COUNTS = np.arange(1, NUM_CLASSES + 1) * 10


def _initialized_steps(config, *, steps_per_epoch, num_seeds):
    """Train/eval steps for 12 input features and COUNTS, with the seeds' keys and initial state."""
    steps = train_lib.make_steps(
        config,
        num_classes=NUM_CLASSES,
        input_shape=(12,),
        class_counts=COUNTS,
        steps_per_epoch=steps_per_epoch,
        mesh=make_mesh(),
    )
    config.num_seeds = num_seeds
    keys = make_population(config).keys()
    return steps, keys, steps.init(keys)


@pytest.mark.parametrize("name", jaxloss.available_losses())
def test_configs_take_every_loss_from_its_spec(name):
    spec = jaxloss.loss_spec(name)
    config = digits.get_config(name)
    set_values = {k: v for k, v in config.loss.hyperparameters.items() if v is not None}
    assert set_values == spec.hyperparameters()
    assert set(config.loss.hyperparameters) == set(spec.hyperparameters()) | set(spec.ranges)
    assert config.model.head == spec.head
    assert dict(config.loss.schedule) == dict(spec.schedule_defaults)
    for field, value in spec.optimizer.items():
        assert config.optimizer[field] == value
    # Specs are self-consistent: tuned names have ranges, ranges lie inside the loss's domain.
    for hyperparameter, interval in spec.ranges.items():
        for value in interval.grid(3):
            testing.spec_call(spec, num_classes=NUM_CLASSES)(
                jnp.zeros((2, NUM_CLASSES)), jnp.array([0, 1]), **{hyperparameter: value}
            )


def test_spec_facts_are_read_from_the_functions():
    assert jaxloss.loss_spec("exact").stochastic and not jaxloss.loss_spec("focal").stochastic
    assert jaxloss.loss_spec("ldam").needs_class_counts
    assert not jaxloss.loss_spec("label_relaxation").needs_class_counts
    assert (
        jaxloss.loss_spec("ldam").head == "cosine" and jaxloss.loss_spec("ldam").scale({}) == 30.0
    )
    with pytest.raises(ValueError, match="not in fn"):
        jaxloss.LossSpec(
            "bad", jaxloss.label_relaxation_loss, ranges={"beta": jaxloss.Range(0.1, 1)}
        )
    with pytest.raises(ValueError, match="Bad range"):
        jaxloss.Range(0.0, 1.0)  # a log range must be positive
    np.testing.assert_allclose(jaxloss.Range(0.01, 1.0).grid(3), [0.01, 0.1, 1.0])


@pytest.mark.parametrize("name", jaxloss.available_losses())
def test_every_loss_trains_a_few_steps_without_nan(name):
    config = tiny_config(name)
    config.model.name = "linear"
    rng = np.random.default_rng(0)
    steps, keys, state = _initialized_steps(config, steps_per_epoch=2, num_seeds=2)
    batch = {
        "features": rng.standard_normal((2, 32, 12)).astype(np.float32),
        "labels": rng.integers(0, NUM_CLASSES, (2, 32)).astype(np.int32),
    }
    # Four steps in one compiled call, on the same batch.
    state, stats = steps.train(state, jax.tree.map(lambda x: np.stack([x] * 4), batch), keys)
    losses = stats["loss"]
    chex.assert_shape(losses, (4, 2))
    chex.assert_tree_all_finite((state["params"], losses))
    # Training on a fixed batch lowers the loss (for the stochastic ones, in expectation).
    assert np.mean(losses[-1]) <= np.mean(losses[0]) + 1e-6


@pytest.mark.parametrize(
    "name",
    [n for n in jaxloss.available_losses() if jaxloss.loss_spec(n).stochastic]
    + ["label_smoothing"],
)
def test_the_key_matters_only_to_stochastic_losses(name):
    logits = jnp.asarray(np.random.default_rng(1).standard_normal((8, NUM_CLASSES)), jnp.float32)
    labels = jnp.arange(8) % NUM_CLASSES
    loss = jaxloss.get_loss(name, class_counts=COUNTS, **jaxloss.loss_spec(name).hyperparameters())
    a, b = jax.jit(jax.vmap(lambda key: loss(logits, labels, key=key)))(
        jax.random.split(jax.random.key(0))
    )
    assert a.shape == (8,)
    assert np.allclose(a, b) == (not jaxloss.loss_spec(name).stochastic)


def test_registry_matches_the_direct_call():
    logits = jnp.asarray(np.random.default_rng(2).standard_normal((5, 4)), jnp.float32)
    labels = jnp.array([0, 1, 2, 3, 0])
    got = jaxloss.get_loss("focal", gamma=1.5)(logits, labels, key=jax.random.key(0))
    np.testing.assert_allclose(got, jaxloss.softmax_focal_loss(logits, labels, gamma=1.5))
    counts = np.array([1, 2, 3, 4])
    got = jaxloss.get_loss("logit_adjusted", class_counts=counts)(
        logits, labels, key=jax.random.key(0)
    )
    want = jaxloss.logit_adjusted_loss(logits, labels, class_counts=counts / counts.sum())
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # A cosine-head loss takes what its head emits, scale x cosine, and divides the scale out.
    cosines = jnp.tanh(logits)
    got = jaxloss.get_loss("ldam", class_counts=counts, scale=20.0)(
        20.0 * cosines, labels, key=jax.random.key(0)
    )
    want = jaxloss.ldam_loss(cosines, labels, class_counts=counts, scale=20.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_unknown_loss_lists_the_available_ones():
    with pytest.raises(ValueError, match="Unknown loss 'hinge'.*cross_entropy.*label_relaxation"):
        jaxloss.get_loss("hinge")


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) alfa.*alpha=0.1"):
        jaxloss.get_loss("label_relaxation", alfa=0.1)


def test_missing_hyperparameter_is_named():
    with pytest.raises(ValueError, match=r"missing required hyperparameter\(s\) beta"):
        jaxloss.get_loss("confidence_penalty")
    with pytest.raises(ValueError, match="needs class_counts"):
        jaxloss.get_loss("balanced_softmax")


def test_the_step_feeds_exact_its_scheduled_temperature():
    config = tiny_config("exact", num_epochs=2)
    config.model.name = "linear"
    config.loss.hyperparameters.method = "quadrature"  # deterministic: comparable by hand
    config.loss.schedule.update(initial_variance=100.0, min_variance=1.0)
    steps, keys, state = _initialized_steps(config, steps_per_epoch=1, num_seeds=1)
    rng = np.random.default_rng(0)
    batch = {
        "features": rng.standard_normal((1, 16, 12)).astype(np.float32),
        "labels": rng.integers(0, NUM_CLASSES, (1, 16)).astype(np.int32),
    }
    for temperature in (10.0, 10.0**0.5):  # one step per epoch: epochs 0 and 1 of 2
        logits = steps.predict(state, batch["features"][0])[0]
        want = jaxloss.exact_loss(
            logits, batch["labels"][0], temperature=temperature, method="quadrature"
        ).mean()
        state, stats = steps.train(state, jax.tree.map(lambda x: x[None], batch), keys)
        np.testing.assert_allclose(stats["loss"][0, 0], want, rtol=1e-5)


def test_adapters_validate_like_the_library_losses():

    logits, labels = jnp.zeros((2, 3)), jnp.array([0, 2])
    with pytest.raises(ValueError, match=r"alpha must be in \[0.0, 1.0\], got 1.5"):
        jaxloss.get_loss("label_smoothing", alpha=1.5)(logits, labels, key=jax.random.key(0))
    with pytest.raises(TypeError, match="labels must be integer"):
        jaxloss.get_loss("cross_entropy")(logits, labels.astype(jnp.float32), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"class_counts must be in \(0, inf\] and finite"):
        jaxloss.get_loss("logit_adjusted", class_counts=[0, 1, 2])(
            logits, labels, key=jax.random.key(0)
        )
    smoothed = jaxloss.get_loss("label_smoothing", alpha=0.3)(
        logits + jnp.array([2.0, 0, 0]), labels, key=None
    )
    # Uniform-target limit and the closed form (1 - a) CE + a * mean_k(-log p_k).
    log_p = jax.nn.log_softmax(logits + jnp.array([2.0, 0, 0]))
    want = 0.7 * -log_p[jnp.arange(2), labels] + 0.3 * -log_p.mean(-1)
    np.testing.assert_allclose(smoothed, want, rtol=1e-6)
