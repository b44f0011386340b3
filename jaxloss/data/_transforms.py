"""Dataset-to-dataset transforms: long-tailed subsampling and symmetric block label noise."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxloss._validation import check_in_range, check_integer
from jaxloss.data._dataset import Dataset, class_counts
from jaxloss.data._sources import Source, view

__all__ = ["long_tailed", "long_tailed_counts", "with_label_noise"]

_KINDS = ("exp", "step")


def long_tailed_counts(
    max_count: int, num_classes: int, *, imbalance_factor: float, kind: str = "exp"
) -> np.ndarray:
    """Per-class example counts of the CIFAR-LT protocol (Cao et al. 2019; Ren et al. 2020).

    With γ = 1 / imbalance_factor, "exp" gives n_i = int(max_count · γ^(i / (C − 1))), so class 0 is
    the head and class C − 1 the tail with max_count / imbalance_factor examples. "step" gives
    max_count to the first ⌈C/2⌉ classes and int(max_count · γ) to the last ⌊C/2⌋.

    Args:
      max_count: examples of the head class (500 on CIFAR-100, 5000 on CIFAR-10).
      num_classes: C >= 2.
      imbalance_factor: n_max / n_min >= 1 (1 keeps every class at max_count).
      kind: "exp" or "step".

    Returns:
      int64 array of shape (num_classes,).

    Example:
      >>> long_tailed_counts(5000, 10, imbalance_factor=200).tolist()
      [5000, 2775, 1540, 854, 474, 263, 146, 81, 45, 25]
    """
    max_count = check_integer("max_count", max_count, lower=1)
    num_classes = check_integer("num_classes", num_classes, lower=2)
    check_in_range("imbalance_factor", imbalance_factor, lower=1.0)
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
    gamma = 1.0 / float(imbalance_factor)
    if kind == "exp":
        # Python int() truncation in float64, as in the reference implementations.
        counts = [int(max_count * gamma ** (i / (num_classes - 1))) for i in range(num_classes)]
    else:
        n_head = num_classes - num_classes // 2
        counts = [max_count] * n_head + [int(max_count * gamma)] * (num_classes // 2)
    return np.asarray(counts, dtype=np.int64)


def long_tailed(
    dataset: Dataset | Source,
    *,
    imbalance_factor: float,
    kind: str = "exp",
    seed: int = 0,
    max_count: int | None = None,
) -> Dataset | Source:
    """Subsamples a dataset to the long-tailed counts of :func:`long_tailed_counts`.

    For each class c in ascending order, its positions are shuffled by one
    ``np.random.RandomState(seed)`` (shared across classes, like the reference's seeded global NumPy
    RNG) and the first n_c are kept; the result is stacked class block by class block. The kept
    examples of a class do not depend on ``imbalance_factor`` or ``kind``, only on ``seed``. Only
    the labels are read: on a :class:`Source` the result is a view selecting the same examples in
    the same order as on the :class:`Dataset` of the same examples.

    Args:
      dataset: the (usually balanced) training set, in memory or a source.
      imbalance_factor: n_max / n_min >= 1.
      kind: "exp" or "step".
      seed: seed of the subsampling.
      max_count: head-class count; defaults to the smallest class count, which every class can
        provide (5000 on the full CIFAR-10 train set).

    Returns:
      A new :class:`Dataset` (a new :class:`Source` for a source) with ``metadata`` extended by
      "imbalance_factor" and "long_tail_kind".

    Example:
      >>> ds = Dataset(np.zeros((40, 1)), np.repeat(np.arange(4), 10), 4, tuple("abcd"), "toy")
      >>> class_counts(long_tailed(ds, imbalance_factor=10)).tolist()
      [10, 4, 2, 1]
    """
    available = class_counts(dataset)
    if max_count is None:
        max_count = int(available.min())
    counts = long_tailed_counts(
        max_count, dataset.num_classes, imbalance_factor=imbalance_factor, kind=kind
    )
    if np.any(counts > available):
        raise ValueError(
            f"max_count={max_count} asks for {counts.tolist()} examples per class but the dataset "
            f"has only {available.tolist()}."
        )
    rng = np.random.RandomState(check_integer("seed", seed, lower=0))
    labels = dataset.labels
    kept = []
    for c in range(dataset.num_classes):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        kept.append(idx[: counts[c]])
    idx = np.concatenate(kept)
    name = f"{dataset.name}/lt-{kind}-{imbalance_factor:g}"
    metadata = {**dataset.metadata, "imbalance_factor": imbalance_factor, "long_tail_kind": kind}
    if isinstance(dataset, Source):
        return view(dataset, indices=idx, name=name, metadata=metadata)
    return dataclasses.replace(
        dataset,
        features=dataset.features[idx],
        labels=labels[idx],
        name=name,
        metadata=metadata,
    )


def with_label_noise(
    dataset: Dataset | Source, *, rate: float, block: int = 5, seed: int = 0
) -> Dataset | Source:
    """Corrupts labels with the smooth top-k protocol (Berrada et al. 2018).

    With probability ``rate`` a label l is redrawn uniformly from its block of ``block`` consecutive
    classes, l − (l mod block) + U{0..block−1} (a last, incomplete block is drawn from its own
    classes only). The draw may return l itself, so the fraction of labels that change is about
    rate·(1 − 1/block); it is measured and stored as ``metadata["effective_noise_rate"]``.

    On a :class:`Source` the result is a view overriding its labels (features are not read), with
    the labels the same call gives on the :class:`Dataset` of the same examples.

    Args:
      dataset: the clean dataset, in memory or a source.
      rate: corruption probability in [0, 1].
      block: block width >= 1 (5 groups CIFAR-100 into its 20 super-classes).
      seed: seed of the corruption.

    Returns:
      A new :class:`Dataset` (:class:`Source`) with noisy labels; metadata gains "noise_rate", "noise_block" and
      "effective_noise_rate".

    Example:
      >>> ds = Dataset(np.zeros((10_000, 1)), np.arange(10_000) % 100, 100, tuple("x" * 100), "t")
      >>> noisy = with_label_noise(ds, rate=0.5)
      >>> round(noisy.metadata["effective_noise_rate"], 2)
      0.4
    """
    check_in_range("rate", rate, lower=0.0, upper=1.0)
    block = check_integer("block", block, lower=1)
    rng = np.random.default_rng(check_integer("seed", seed, lower=0))
    labels = dataset.labels
    base = labels - labels % block
    width = np.minimum(block, dataset.num_classes - base)
    corrupt = rng.random(labels.shape[0]) < rate
    redrawn = base + rng.integers(0, width)
    noisy = np.where(corrupt, redrawn, labels).astype(np.int32)
    effective = float(np.mean(noisy != labels)) if labels.size else 0.0
    name = f"{dataset.name}/noise-{rate:g}"
    metadata = {
        **dataset.metadata,
        "noise_rate": rate,
        "noise_block": block,
        "effective_noise_rate": effective,
    }
    if isinstance(dataset, Source):
        return view(dataset, labels=noisy, name=name, metadata=metadata)
    return dataclasses.replace(dataset, labels=noisy, name=name, metadata=metadata)
