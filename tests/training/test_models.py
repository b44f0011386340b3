"""Models: every backbone and head builds, runs, trains one step; bad configs fail clearly."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from jaxloss.training import build_model, defaults, models

NUM_CLASSES = 5


def _config(**fields):
    config = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_sizes": (8,), "depth": 8, "width": 1, "head": "linear"}
    )
    config.update(fields)
    return config


CASES = {
    "mlp": (_config(name="mlp"), (8, 8, 1)),
    "linear": (_config(name="linear"), (13,)),
    "cnn": (_config(name="cnn"), (8, 8, 1)),
    "resnet": (_config(name="resnet", depth=8), (8, 8, 3)),
    "wide_resnet": (_config(name="wide_resnet", depth=10, width=1), (8, 8, 3)),
    "cosine_head": (_config(head="cosine"), (6,)),
}


@pytest.mark.parametrize("case", CASES)
def test_model_trains_one_step(case):
    config, input_shape = CASES[case]
    model = build_model(config, NUM_CLASSES, input_shape, nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, *input_shape)), jnp.float32)
    labels = jnp.arange(4) % NUM_CLASSES
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            logits = model(x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    loss = step(model, optimizer)
    logits = model(x, train=False)
    assert logits.shape == (4, NUM_CLASSES)
    chex.assert_tree_all_finite((loss, logits, nnx.state(model)))


def test_cosine_head_outputs_scaled_cosines():
    config, input_shape = CASES["cosine_head"]
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, *input_shape)), jnp.float32)
    unit = build_model(config, NUM_CLASSES, input_shape, nnx.Rngs(0))(x * 100.0, train=False)
    assert np.all(np.abs(unit) <= 1.0 + 1e-6)
    scaled = build_model(config, NUM_CLASSES, input_shape, nnx.Rngs(0), cosine_scale=30.0)
    np.testing.assert_allclose(scaled(x * 100.0, train=False), 30.0 * unit, rtol=1e-5)
    # The scale is a constant of the head, not a trained parameter.
    params = jax.tree.leaves(nnx.state(scaled, nnx.Param))
    assert all(p.shape != () for p in params)


def test_zero_logit_head_pins_class_zero():
    model = build_model(_config(name="linear", zero_logit=True), 3, (4,), nnx.Rngs(0))
    logits = model(jnp.ones((2, 4)), train=False)
    assert logits.shape == (2, 3)
    np.testing.assert_array_equal(logits[:, 0], 0.0)
    assert model.head.linear.kernel[...].shape == (4, 2)


def _num_params(config, num_classes, input_shape):
    model = nnx.eval_shape(lambda: build_model(config, num_classes, input_shape, nnx.Rngs(0)))
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_fields_not_given_take_the_defaults():
    # Only the name: the head, its zero logit and the MLP's sizes come from training.defaults.
    model_defaults = defaults.get_config().model
    model = build_model(ml_collections.ConfigDict({"name": "mlp"}), 3, (4,), nnx.Rngs(0))
    assert (model_defaults.head, model_defaults.zero_logit) == ("linear", False)
    assert isinstance(model.head, models.LinearHead)
    assert model.head.linear.kernel[...].shape == (model_defaults.hidden_sizes[-1], 3)
    sizes = [layer.kernel[...].shape[1] for layer in model.backbone.layers]
    assert tuple(sizes) == tuple(model_defaults.hidden_sizes)
    assert model(jnp.ones((2, 4)), train=False).shape == (2, 3)


def test_mlp_size_matches_simple_dense():
    # The label relaxation paper's simple_dense on MNIST: 1,863,690 parameters.
    assert _num_params(_config(hidden_sizes=(1024, 1024)), 10, (28, 28, 1)) == 1_863_690


@pytest.mark.parametrize(
    ("name", "depth", "width", "millions"),
    [
        # Published sizes on CIFAR-10: ResNet-20/56 0.27M/0.85M (He et al. 2016; the 1x1
        # projections add a little), WRN-16-8 11.0M and WRN-28-10 36.5M (Zagoruyko & Komodakis).
        ("resnet", 20, 1, 0.27),
        ("resnet", 56, 1, 0.85),
        ("wide_resnet", 16, 8, 11.0),
        ("wide_resnet", 28, 10, 36.5),
    ],
)
def test_resnet_sizes_match_the_papers(name, depth, width, millions):
    count = _num_params(_config(name=name, depth=depth, width=width), 10, (32, 32, 3))
    assert count / 1e6 == pytest.approx(millions, rel=0.03)


@pytest.mark.parametrize(
    ("fields", "input_shape", "message"),
    [
        ({"name": "vgg"}, (8, 8, 1), "Unknown model 'vgg'. Available models: mlp, cnn"),
        ({"head": "svm"}, (6,), "Unknown head 'svm'. Available heads: linear, cosine"),
        ({"name": "resnet", "depth": 21}, (8, 8, 1), "6n\\+2"),
        ({"name": "wide_resnet", "depth": 15}, (8, 8, 1), "6n\\+4"),
        ({"name": "cnn"}, (64,), "needs images"),
    ],
)
def test_bad_model_configs_fail_clearly(fields, input_shape, message):
    with pytest.raises(ValueError, match=message):
        build_model(_config(**fields), NUM_CLASSES, input_shape, nnx.Rngs(0))
