r"""Input pipeline throughput per host next to a CIFAR ResNet-20 train step's, on this machine.

Run:  python experiments/benchmark_input.py [--workers=0,1,2] [--batches=300] [--json=out.json]

Writes a CIFAR-shaped ArrayRecord data set (``--num_examples`` random 32x32x3 uint8 images with
int labels, :func:`jaxloss.data.write_array_record`) into a temporary directory and reads it with
:func:`jaxloss.data.train_batches` (global batch ``--batch_size``, one process, a fresh shuffle
every epoch): images/s over ``--batches`` batches after ``--warmup`` batches, for each
``--workers`` count (0: read in this process). Next to it: images/s of a jitted ResNet-20
(``experiments/configs/cifar10.py`` at depth 20) train step on the same batch size, uint8 in,
device-side normalization, forward, backward and an SGD-with-momentum update, timed over
``--model_steps`` steps after compilation. The pipeline keeps up when its rate is above the
step's; the issue's goal is 20,000 images/s per host on 2 cores.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

import cli
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags
from flax import nnx

from jaxloss import data
from jaxloss.training import build_model

_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker process counts to time.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Global batch size.")
_BATCHES = flags.DEFINE_integer("batches", 300, "Timed batches per pipeline setting.")
_WARMUP = flags.DEFINE_integer("warmup", 20, "Batches read before timing (workers start).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 50_000, "Examples in the data set.")
_MODEL_STEPS = flags.DEFINE_integer("model_steps", 5, "Timed ResNet-20 train steps (0: skip).")
_JSON = flags.DEFINE_string("json", None, "Where the rows go as JSON (optional).")

SHAPE = (32, 32, 3)


def write_dataset(directory: str, num_examples: int) -> data.ArrayRecordSource:
    """A CIFAR-shaped ArrayRecord source of random images and labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_examples, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 10, num_examples)
    path = os.path.join(directory, "cifar_shaped.array_record")
    data.write_array_record(path, images, labels)
    return data.ArrayRecordSource(
        path,
        feature_shape=SHAPE,
        num_classes=10,
        name="cifar-shaped",
        normalization=data.Normalization(255.0, data.CIFAR10_MEAN, data.CIFAR10_STD),
    )


def pipeline_rate(source, *, workers: int, batch_size: int, batches: int, warmup: int) -> float:
    """Images/s this host's train iterator delivers (host arrays, no device transfer)."""
    with data.train_batches(
        source, global_batch_size=batch_size, seed=0, worker_count=workers, prefetch=4
    ) as batches_it:
        for _ in range(warmup):
            next(batches_it)
        start = time.perf_counter()
        for _ in range(batches):
            next(batches_it)
        return batches * batch_size / (time.perf_counter() - start)


def train_step_rate(source, *, batch_size: int, steps: int) -> float:
    """Images/s of a jitted ResNet-20 SGD step on uint8 batches of ``source``."""
    config = ml_collections.ConfigDict({"name": "resnet", "depth": 20})
    model = build_model(config, source.num_classes, source.feature_shape, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # Plain arrays cross the jit boundary; NNX variables made outside it could not be updated.
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    optimizer = optax.sgd(0.1, momentum=0.9)
    normalize = source.normalization

    @jax.jit
    def step(params, rest, opt_state, features, labels):
        def objective(params):
            model = nnx.merge(graphdef, nnx.State(params), nnx.State(rest))
            logits = model(normalize(features), train=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])

        (loss, rest), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    batch = next(data.train_batches(source, global_batch_size=batch_size, seed=0))
    features, labels = jnp.asarray(batch["features"]), jnp.asarray(batch["labels"])
    opt_state = optimizer.init(params)
    state = step(params, rest, opt_state, features, labels)  # compiles
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state = step(*state[:3], features, labels)
    jax.block_until_ready(state)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    batch_size = _BATCH_SIZE.value
    print(
        f"jax {jax.__version__}, {os.cpu_count()} CPUs ({platform.processor() or 'unknown'}); "
        f"global batch {batch_size}, {_NUM_EXAMPLES.value} CIFAR-shaped uint8 examples"
    )
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        source = write_dataset(directory, _NUM_EXAMPLES.value)
        print(f"wrote the ArrayRecord file in {time.perf_counter() - start:.1f} s")
        print(f"| {'what':<40} | {'images/s':>10} |")
        print(f"|{'-' * 42}|{'-' * 12}|")
        for workers in map(int, _WORKERS.value):
            rate = pipeline_rate(
                source,
                workers=workers,
                batch_size=batch_size,
                batches=_BATCHES.value,
                warmup=_WARMUP.value,
            )
            rows.append({"what": f"pipeline, {workers} worker processes", "images_per_s": rate})
            print(f"| {rows[-1]['what']:<40} | {rate:>10,.0f} |", flush=True)
        if _MODEL_STEPS.value:
            rate = train_step_rate(source, batch_size=batch_size, steps=_MODEL_STEPS.value)
            rows.append({"what": "ResNet-20 train step (jit, this CPU)", "images_per_s": rate})
            print(f"| {rows[-1]['what']:<40} | {rate:>10,.0f} |")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    cli.run(main, epilogue="")
