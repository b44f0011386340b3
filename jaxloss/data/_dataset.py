"""The in-memory dataset every loader returns and every transform maps to a new one."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Dataset", "class_counts"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled dataset held in host memory.

    Attributes:
      features: float32 array, (N, H, W, C) for images (NHWC) or (N, D) for tables.
      labels: int32 array of shape (N,), values in [0, num_classes).
      num_classes: the number of classes (some may have no example after a transform).
      class_names: one name per class.
      name: a short description, e.g. ``"digits/train"`` or ``"cifar10/train/lt-exp-100"``.
      metadata: free-form facts about how the data was made (standardization constants, imbalance
        factor, effective label-noise rate, ...).

    Example:
      >>> ds = Dataset(np.zeros((4, 2), np.float32), np.array([0, 1, 1, 0]), 2, ("a", "b"), "toy")
      >>> ds.num_examples, ds.class_names
      (4, ('a', 'b'))
    """

    features: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    name: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        features = np.asarray(self.features, dtype=np.float32)
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or features.shape[:1] != labels.shape:
            raise ValueError(
                f"labels must have shape (N,) matching features.shape[0]; got features "
                f"{features.shape} and labels {labels.shape}."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}.")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got range "
                f"[{labels.min()}, {labels.max()}]."
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries for num_classes="
                f"{self.num_classes}."
            )
        # Frozen: normalize dtypes through object.__setattr__ once, at construction.
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "labels", labels.astype(np.int32))
        object.__setattr__(self, "class_names", tuple(self.class_names))

    @property
    def num_examples(self) -> int:
        """The number of examples N."""
        return int(self.labels.shape[0])


def class_counts(dataset: Dataset) -> np.ndarray:
    """Number of examples of each class.

    Args:
      dataset: any :class:`Dataset` or :class:`jaxloss.data.Source` (only its labels are read).

    Returns:
      int64 array of shape (num_classes,); classes without examples count 0.

    Example:
      >>> ds = Dataset(np.zeros((3, 2)), np.array([0, 2, 2]), 3, ("a", "b", "c"), "toy")
      >>> class_counts(ds)
      array([1, 0, 2])
    """
    return np.bincount(dataset.labels, minlength=dataset.num_classes).astype(np.int64)
