"""Real datasets that ship inside scikit-learn, so they load on a machine with no network."""

from __future__ import annotations

import functools

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


def stratified_split(labels: np.ndarray, *, seed: int) -> dict[str, np.ndarray]:
    """Deterministic 60/20/20 stratified split of example indices.

    Every class is permuted with a generator seeded by ``seed`` and cut at 60 % and 80 % (rounded
    per class), so each split holds each class in the same proportion up to rounding.

    Args:
      labels: int array of shape (N,).
      seed: the split's seed; the same seed always gives the same split.

    Returns:
      A dict from "train", "validation", "test" to sorted index arrays that partition range(N).

    Example:
      >>> parts = stratified_split(np.repeat(np.arange(2), 10), seed=0)
      >>> [len(parts[s]) for s in ("train", "validation", "test")]
      [12, 4, 4]
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(_TRAIN_FRACTION * len(idx)))
        n_val = int(round(_VALIDATION_FRACTION * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["validation"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


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
