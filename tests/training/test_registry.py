"""The loss registry: every loss reachable by name, uniform calls, clear errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss.training import train as train_lib
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
        mesh=train_lib.make_mesh(),
    )
    keys = train_lib.seed_keys(0, num_seeds)
    return steps, keys, steps.init(keys)


def test_every_registered_loss_has_default_hyperparameters_in_the_configs():
    assert set(jaxloss.available_losses()) == set(digits.LOSS_HYPERPARAMETERS)
    assert {"cross_entropy", "label_smoothing", "exact", "balanced_softmax"} <= set(
        jaxloss.available_losses()
    )


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
    losses = []
    for _ in range(4):
        state, stats = steps.train(state, batch, keys)
        losses.append(stats["loss"])
    chex.assert_tree_all_finite((state["params"], losses))
    # Training on a fixed batch lowers the loss (for the stochastic ones, in expectation).
    assert np.mean(losses[-1]) <= np.mean(losses[0]) + 1e-6


@pytest.mark.parametrize(
    "name", ["exact", "balanced_noised_topk", "imbalanced_noised_topk", "label_smoothing"]
)
def test_the_key_matters_only_to_stochastic_losses(name):
    logits = jnp.asarray(np.random.default_rng(1).standard_normal((8, NUM_CLASSES)), jnp.float32)
    labels = jnp.arange(8) % NUM_CLASSES
    loss = jaxloss.get_loss(name, class_counts=COUNTS, **digits.LOSS_HYPERPARAMETERS[name])
    a, b = jax.jit(jax.vmap(lambda key: loss(logits, labels, key=key)))(
        jax.random.split(jax.random.key(0))
    )
    assert a.shape == (8,)
    assert np.allclose(a, b) == (name == "label_smoothing")


def test_registry_matches_the_direct_call():
    logits = jnp.asarray(np.random.default_rng(2).standard_normal((5, 4)), jnp.float32)
    labels = jnp.array([0, 1, 2, 3, 0])
    got = jaxloss.get_loss("focal", gamma=1.5)(logits, labels, key=jax.random.key(0))
    np.testing.assert_allclose(got, jaxloss.softmax_focal_loss(logits, labels, gamma=1.5))
    counts = np.array([1, 2, 3, 4])
    got = jaxloss.get_loss("logit_adjusted", class_counts=counts)(
        logits, labels, key=jax.random.key(0)
    )
    want = jaxloss.logit_adjusted_loss(logits, labels, class_priors=counts / counts.sum())
    np.testing.assert_allclose(got, want, rtol=1e-6)


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


def test_exact_head_feeds_its_scheduled_temperature_to_the_exact_loss():
    config = tiny_config("exact", num_epochs=2)
    config.model.update(name="linear", head="exact", initial_variance=100.0, min_variance=1.0)
    config.optimizer.gradient_normalizer = True
    steps, keys, state = _initialized_steps(config, steps_per_epoch=1, num_seeds=1)
    rng = np.random.default_rng(0)
    batch = {
        "features": rng.standard_normal((1, 16, 12)).astype(np.float32),
        "labels": rng.integers(0, NUM_CLASSES, (1, 16)).astype(np.int32),
    }
    variances = []
    for _ in range(2):  # one step per epoch: epochs 0 and 1 of 2
        state, stats = steps.train(state, batch, keys)
        chex.assert_tree_all_finite((state["params"], stats))
        (variance,) = jax.tree.leaves(state["rest"])
        variances.append(float(variance[0]))
    np.testing.assert_allclose(variances, [100.0, 10.0], rtol=1e-5)


def test_adapters_validate_like_the_library_losses():

    logits, labels = jnp.zeros((2, 3)), jnp.array([0, 2])
    with pytest.raises(ValueError, match=r"alpha must be in \[0.0, 1.0\], got 1.5"):
        jaxloss.get_loss("label_smoothing", alpha=1.5)(logits, labels, key=jax.random.key(0))
    with pytest.raises(TypeError, match="labels must be integer"):
        jaxloss.get_loss("cross_entropy")(logits, labels.astype(jnp.float32), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"class_counts must be in \(0, inf\]"):
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
