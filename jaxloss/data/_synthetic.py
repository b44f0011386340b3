"""``teacher``: a synthetic classification problem with any number of classes."""

from __future__ import annotations

import numpy as np

from jaxloss._validation import check_in_range, check_integer
from jaxloss.data._dataset import Dataset

__all__ = ["SYNTHETIC_DATASETS", "teacher_dataset"]

SYNTHETIC_DATASETS = ("teacher",)
_SPLIT_STREAMS = {"train": 1, "validation": 2, "test": 3}
_ROWS_PER_CHUNK = 4096  # rows scored at once: (4096, C) float32 is 160 MB at C = 10,000


def teacher_dataset(
    split: str,
    *,
    seed: int = 0,
    num_classes: int = 10_000,
    num_features: int = 64,
    train_examples: int = 100_000,
    eval_examples: int = 10_000,
    input_noise: float = 0.5,
) -> Dataset:
    """A split of a problem labelled by a fixed random linear teacher, for many-class experiments.

    The teacher is a matrix :math:`W \\in \\mathbb{R}^{D \\times C}` whose columns are
    independent uniform unit vectors (normalized Gaussian draws from ``seed``: every class is
    some input's best, unlike with unnormalized columns); the examples are
    :math:`x \\sim \\mathcal{N}(0, I_D)` and each label is what the teacher says about a noisy copy
    of its input,

    .. math::
      y = \\arg\\max_c \\, ((x + \\sigma \\varepsilon)^\\top W)_c, \\qquad
      \\varepsilon \\sim \\mathcal{N}(0, I_D),

    so a linear student can learn the teacher's ranking of classes but not every label: with
    σ > 0 the top-5 accuracy of the teacher itself is below 1, and top-k losses have something
    to gain. Splits share the teacher and draw their examples from their own streams.

    Args:
      split: "train", "validation" or "test".
      seed: the teacher's and the examples' seed.
      num_classes: C (at least 2).
      num_features: D.
      train_examples: examples in the train split.
      eval_examples: examples in each of validation and test.
      input_noise: σ, the noise on the teacher's view of the input (≥ 0).

    Returns:
      A :class:`Dataset` with (N, D) float32 features and int32 labels.

    Example:
      >>> ds = teacher_dataset("test", num_classes=50, num_features=8, eval_examples=100)
      >>> ds.features.shape, ds.num_classes, ds.name
      ((100, 8), 50, 'teacher-50/test')
    """
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"split must be one of {tuple(_SPLIT_STREAMS)}, got {split!r}.")
    seed = check_integer("seed", seed, lower=0)
    num_classes = check_integer("num_classes", num_classes, lower=2)
    num_features = check_integer("num_features", num_features, lower=1)
    size = check_integer(
        f"{'train' if split == 'train' else 'eval'}_examples",
        train_examples if split == "train" else eval_examples,
        lower=1,
    )
    check_in_range("input_noise", input_noise, lower=0.0, finite=True)
    teacher = np.random.default_rng([seed, 0]).standard_normal((num_features, num_classes))
    teacher = (teacher / np.linalg.norm(teacher, axis=0)).astype(np.float32)
    rng = np.random.default_rng([seed, _SPLIT_STREAMS[split]])
    features = rng.standard_normal((size, num_features), dtype=np.float32)
    labels = np.empty(size, np.int32)
    for start in range(0, size, _ROWS_PER_CHUNK):
        rows = features[start : start + _ROWS_PER_CHUNK]
        noisy = rows + input_noise * rng.standard_normal(rows.shape, dtype=np.float32)
        labels[start : start + len(rows)] = np.argmax(noisy @ teacher, axis=1)
    return Dataset(
        features,
        labels,
        num_classes,
        tuple(str(c) for c in range(num_classes)),
        f"teacher-{num_classes}/{split}",
        metadata={"num_features": num_features, "input_noise": input_noise, "seed": seed},
    )
