"""Real datasets that ship inside scikit-learn, so they load on a machine with no network."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from jaxloss.data._dataset import Dataset

__all__ = ["EMBEDDED_DATASETS", "load_embedded", "stratified_split"]

EMBEDDED_DATASETS = ("digits", "iris", "wine", "breast_cancer")
SPLITS = ("train", "validation", "test")
# Fractions of every class that go to train and validation; the rest is the test split.
_TRAIN_FRACTION = 0.6
_VALIDATION_FRACTION = 0.2
# Floor for a feature's standard deviation, as in the EXACT UCI protocol.
_STD_FLOOR = 1e-6


@functools.cache
def _raw(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn import datasets as sk_datasets  # imported lazily: sklearn is an optional extra

    if name == "digits":
        bunch = sk_datasets.load_digits()
        # Pixel counts are 0..16; scale to [0, 1] and keep NHWC with one channel.
        features = bunch.images.astype(np.float64)[..., None] / 16.0
        names = tuple(str(c) for c in bunch.target_names)
    else:
        bunch = getattr(sk_datasets, f"load_{name}")()
        features = bunch.data.astype(np.float64)
        names = tuple(str(c) for c in bunch.target_names)
    return features, bunch.target.astype(np.int32), names


def stratified_split(
    labels: np.ndarray,
    *,
    seed: int,
    fractions: Sequence[tuple[str, float]] = (
        ("train", _TRAIN_FRACTION),
        ("validation", _VALIDATION_FRACTION),
    ),
    rest: str = "test",
) -> dict[str, np.ndarray]:
    """Deterministic stratified split of example indices (60/20/20 train/validation/test by
    default).

    Every class is permuted with a generator seeded by ``seed`` and cut into consecutive pieces,
    one per ``fractions`` entry (its fraction of the class, rounded per class), and the rest, so
    each split holds each class in the same proportion up to rounding.

    Args:
      labels: int array of shape (N,).
      seed: the split's seed; the same seed always gives the same split.
      fractions: (split name, fraction of each class) pairs, taken in order.
      rest: the split that gets what the fractions leave.

    Returns:
      A dict from the split names (``fractions``' then ``rest``) to sorted index arrays that
      partition range(N).

    Example:
      >>> parts = stratified_split(np.repeat(np.arange(2), 10), seed=0)
      >>> [len(parts[s]) for s in ("train", "validation", "test")]
      [12, 4, 4]
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split, _ in fractions}
    parts[rest] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for split, fraction in fractions:
            stop = start + int(round(fraction * len(idx)))
            parts[split].append(idx[start:stop])
            start = stop
        parts[rest].append(idx[start:])
    return {
        split: np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, np.int64)
        for split, chunks in parts.items()
    }


def load_embedded(name: str, *, split: str, seed: int) -> Dataset:
    """Loads one split of an embedded dataset, standardized with statistics of its train split.

    Tables are standardized per feature (std floored at 1e-6); digits images, after scaling the
    pixels to [0, 1], with one mean and std over all train pixels (a per-pixel std would be 0 at the
    always-blank borders).
    """
    features, labels, names = _raw(name)
    parts = stratified_split(labels, seed=seed)
    train = features[parts["train"]]
    axes = tuple(range(train.ndim)) if name == "digits" else 0
    mean = train.mean(axis=axes)
    std = np.maximum(train.std(axis=axes), _STD_FLOOR)
    idx = parts[split]
    return Dataset(
        features=((features[idx] - mean) / std).astype(np.float32),
        labels=labels[idx],
        num_classes=len(names),
        class_names=names,
        name=f"{name}/{split}",
        metadata={"seed": seed, "standardize_mean": mean, "standardize_std": std},
    )
