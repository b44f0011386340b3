"""EXACT with its defaults trains the Flax NNX MNIST-tutorial CNN as well as cross-entropy does.

The loop is the tutorial's (https://flax.readthedocs.io/en/latest/mnist_tutorial.html): two 3x3
convolutions (32 and 64 channels) with ReLU and 2x2 average pooling, Linear 256, ReLU, Linear 10,
``nnx.Optimizer(model, optax.adamw(0.005, 0.9), wrt=nnx.Param)`` and batches of 32, on
scikit-learn's 8x8 digits instead of MNIST so that it runs in seconds on one CPU core.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxloss
from jaxloss import data

STEPS, BATCH = 300, 32


class CNN(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.avg_pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        # 8x8 inputs are 2x2x64 after the two poolings (the tutorial's 28x28 give 7x7x64).
        self.linear1 = nnx.Linear(2 * 2 * 64, 256, rngs=rngs)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        x = self.avg_pool(nnx.relu(self.conv1(x)))
        x = self.avg_pool(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        return self.linear2(nnx.relu(self.linear1(x)))


def cross_entropy(logits, labels, key):
    del key
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def exact(logits, labels, key):
    return jaxloss.exact_loss(logits, labels, key=key)


def train_and_test(loss_fn, seed=0):
    """Test accuracy after the tutorial's loop with ``loss_fn(logits, labels, key)``."""
    train, test = data.load("digits", split="train"), data.load("digits", split="test")
    model = CNN(rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adamw(0.005, 0.9), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, images, labels, key):
        def mean_loss(model):
            return jnp.mean(loss_fn(model(images), labels, key))

        optimizer.update(model, nnx.grad(mean_loss)(model))

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    order = np.concatenate([rng.permutation(len(train.labels)) for _ in range(10)])
    for step in range(STEPS):
        batch = order[step * BATCH : (step + 1) * BATCH]
        train_step(
            model,
            optimizer,
            jnp.asarray(train.features[batch]),
            jnp.asarray(train.labels[batch]),
            jax.random.fold_in(key, step),
        )
    predictions = jnp.argmax(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(test.features)), -1)
    return float(jnp.mean(predictions == jnp.asarray(test.labels)))


def test_default_exact_trains_as_well_as_cross_entropy():
    ce_accuracy = train_and_test(cross_entropy)
    exact_accuracy = train_and_test(exact)
    print(f"test accuracy: cross-entropy {ce_accuracy:.4f}, EXACT (defaults) {exact_accuracy:.4f}")
    assert ce_accuracy > 0.9
    assert exact_accuracy > ce_accuracy - 0.05
