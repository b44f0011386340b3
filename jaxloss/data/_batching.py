"""Epoch iterators: seeded shuffling, drop-remainder or masked padding, device placement, resume."""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import numpy as np

from jaxloss._validation import check_integer
from jaxloss.data._dataset import Dataset

__all__ = ["epoch_batches", "steps_per_epoch"]


def steps_per_epoch(num_examples: int, batch_size: int, *, train: bool) -> int:
    """Batches in one epoch: ⌊N / B⌋ for training (drop remainder), ⌈N / B⌉ for evaluation.

    Example:
      >>> steps_per_epoch(10, 4, train=True), steps_per_epoch(10, 4, train=False)
      (2, 3)
    """
    num_examples = check_integer("num_examples", num_examples, lower=0)
    batch_size = check_integer("batch_size", batch_size, lower=1)
    return num_examples // batch_size if train else math.ceil(num_examples / batch_size)


def _batch_sharding(sharding: jax.sharding.NamedSharding, batch_size: int):
    """The sharding of a batch along its leading axis, and a check that it divides evenly."""
    if not isinstance(sharding, jax.sharding.NamedSharding):
        raise TypeError(f"sharding must be a NamedSharding or None, got {type(sharding).__name__}.")
    mesh = sharding.mesh
    if "data" not in mesh.axis_names:
        raise ValueError(f"sharding's mesh needs a 'data' axis, got axes {mesh.axis_names}.")
    num_shards = mesh.shape["data"]
    if batch_size % num_shards:
        raise ValueError(
            f"batch_size={batch_size} must be divisible by the {num_shards} devices of the mesh's "
            f"'data' axis."
        )
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def epoch_batches(
    dataset: Dataset,
    *,
    batch_size: int,
    epoch: int,
    seed: int,
    train: bool,
    start_step: int = 0,
    sharding: jax.sharding.NamedSharding | None = None,
) -> Iterator[dict]:
    """Yields the batches of one epoch.

    Training batches follow a permutation drawn from ``np.random.default_rng([seed, epoch])`` and
    the last incomplete batch is dropped, so every batch is full. Evaluation batches keep the
    dataset order and cover every example once; the last batch is padded with zeros and its
    ``mask`` is False on the padding. Because the order depends only on (seed, epoch), starting at
    ``start_step`` yields exactly the batches a run from step 0 would have yielded from there on.

    Args:
      dataset: the examples.
      batch_size: B, a multiple of the number of devices on the mesh's 'data' axis.
      epoch: epoch index >= 0 (selects the shuffle).
      seed: shuffle seed.
      train: shuffle and drop the remainder (True) or keep order and pad (False).
      start_step: batches of this epoch to skip (to resume inside an epoch).
      sharding: a ``NamedSharding`` over a mesh with a 'data' axis: each array is placed with its
        leading axis split over 'data'. None yields host NumPy arrays.

    Yields:
      dicts with "features" ``(B, *feature_shape)`` float32, "labels" (B,) int32, "mask" (B,) bool.

    Example:
      >>> ds = Dataset(np.zeros((5, 2)), np.arange(5) % 2, 2, ("a", "b"), "toy")
      >>> [b["mask"].tolist() for b in epoch_batches(
      ...     ds, batch_size=2, epoch=0, seed=0, train=False)]
      [[True, True], [True, True], [True, False]]
    """
    batch_size = check_integer("batch_size", batch_size, lower=1)
    epoch = check_integer("epoch", epoch, lower=0)
    seed = check_integer("seed", seed, lower=0)
    n = dataset.num_examples
    num_steps = steps_per_epoch(n, batch_size, train=train)
    start_step = check_integer("start_step", start_step, lower=0, upper=num_steps)
    if train and num_steps == 0:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {n} training examples of {dataset.name!r}; "
            f"no full batch can be formed."
        )
    placement = None if sharding is None else _batch_sharding(sharding, batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(n) if train else np.arange(n)
    for step in range(start_step, num_steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        valid = len(idx)
        if valid < batch_size:
            idx = np.concatenate([idx, np.zeros(batch_size - valid, dtype=idx.dtype)])
        features = dataset.features[idx]
        labels = dataset.labels[idx]
        mask = np.arange(batch_size) < valid
        if valid < batch_size:
            # Zero padding: finite inputs, label 0, excluded by the mask.
            features[valid:] = 0.0
            labels[valid:] = 0
        batch = {"features": features, "labels": labels, "mask": mask}
        yield batch if placement is None else jax.device_put(batch, placement)
