"""Random-access sources: what the streaming input pipeline reads, one batch of indices at a time.

A source keeps only its labels in memory (read once, by streaming through the records, when first
asked for); features are read on demand. The long-tail and label-noise transforms become views
(index selections, label overrides) over any source.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxloss.data._dataset import Dataset

__all__ = [
    "ArrayRecordSource",
    "InMemorySource",
    "Normalization",
    "Source",
    "TfdsSource",
    "view",
    "write_array_record",
]

# Records read per call while streaming through a source for its labels.
_LABEL_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class Normalization:
    """The device-side step that turns features as stored into the model's float32 inputs.

    ``(features / divisor − mean) / std`` per channel (last axis) in float32, the arithmetic
    :func:`jaxloss.data.load` applies on the host: tfds images travel as uint8 and are scaled and
    standardized here, inside the jitted train or eval step. The default only casts to float32
    (embedded datasets arrive standardized). Frozen and hashable, so it may be a static argument.

    Attributes:
      divisor: features are divided by it first (255.0 for uint8 pixels).
      mean: per-channel means of the scaled features, or None (no standardization).
      std: per-channel standard deviations, or None.

    Example:
      >>> norm = Normalization(255.0, mean=(0.5,), std=(0.5,))
      >>> norm(np.array([[0], [255]], np.uint8)).ravel().tolist()
      [-1.0, 1.0]
    """

    divisor: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must both be given or both be None.")

    def __call__(self, features) -> jnp.ndarray:
        """``features`` (any shape, channels last) as standardized float32; jittable."""
        x = jnp.asarray(features).astype(jnp.float32)
        if self.divisor != 1.0:
            x = x / jnp.float32(self.divisor)
        if self.mean is not None:
            x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
        return x


class Source(abc.ABC):
    """Labelled examples with random access by index.

    Attributes:
      num_classes: the number of classes.
      class_names: one name per class.
      name: a short description, e.g. ``"cifar10/train"``.
      metadata: free-form facts about how the data was made.
      feature_shape: the shape of one example's features.
      feature_dtype: their dtype as stored (uint8 for tfds images).
      normalization: the :class:`Normalization` to apply on device.
    """

    num_classes: int
    class_names: tuple[str, ...]
    name: str
    metadata: dict[str, Any]
    feature_shape: tuple[int, ...]
    feature_dtype: np.dtype
    normalization: Normalization

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of examples."""

    @abc.abstractmethod
    def _read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Features and labels of ``indices`` (a non-empty int64 array in [0, len))."""

    @property
    def num_examples(self) -> int:
        """The number of examples N (as :attr:`Dataset.num_examples`)."""
        return len(self)

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """All labels, int32 (N,); read once by streaming through the records, then kept."""
        chunks = [
            self._read(np.arange(start, min(start + _LABEL_CHUNK, len(self))))["labels"]
            for start in range(0, len(self), _LABEL_CHUNK)
        ]
        return np.concatenate(chunks).astype(np.int32) if chunks else np.zeros(0, np.int32)

    def read(self, indices) -> dict[str, np.ndarray]:
        """A batch of examples.

        Args:
          indices: int array (K,) of example indices in [0, N), in any order, repeats allowed.

        Returns:
          ``{"features": (K, *feature_shape) feature_dtype, "labels": (K,) int32}``.

        Raises:
          IndexError: an index outside [0, N).
        """
        indices = np.asarray(indices, np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)}) for {self.name!r}.")
        if not indices.size:
            return {
                "features": np.zeros((0, *self.feature_shape), self.feature_dtype),
                "labels": np.zeros(0, np.int32),
            }
        batch = self._read(indices)
        return {
            "features": np.asarray(batch["features"], self.feature_dtype),
            "labels": np.asarray(batch["labels"], np.int32),
        }

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """One record, ``{"features": feature_shape array, "labels": int32 scalar}``."""
        batch = self.read([index])
        return {"features": batch["features"][0], "labels": batch["labels"][0]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} examples)"


def _describe(
    source: Source,
    *,
    num_classes,
    class_names,
    name,
    metadata,
    feature_shape,
    feature_dtype,
    normalization,
) -> None:
    """Sets the facts every source exposes (class set, name, feature layout, normalization)."""
    source.num_classes = int(num_classes)
    source.class_names = tuple(str(c) for c in class_names)
    source.name = name
    source.metadata = dict(metadata)
    source.feature_shape = tuple(feature_shape)
    source.feature_dtype = np.dtype(feature_dtype)
    source.normalization = normalization


class InMemorySource(Source):
    """A :class:`Dataset` held in host memory (the embedded datasets).

    Example:
      >>> ds = Dataset(np.arange(6.0).reshape(3, 2), np.array([0, 1, 1]), 2, ("a", "b"), "toy")
      >>> source = InMemorySource(ds)
      >>> source.read([2, 0])["features"].tolist(), source[1]["labels"]
      ([[4.0, 5.0], [0.0, 1.0]], np.int32(1))
    """

    def __init__(self, dataset: Dataset):
        self._features = dataset.features
        _describe(
            self,
            num_classes=dataset.num_classes,
            class_names=dataset.class_names,
            name=dataset.name,
            metadata=dataset.metadata,
            feature_shape=dataset.features.shape[1:],
            feature_dtype=dataset.features.dtype,
            normalization=Normalization(),
        )
        self.labels = dataset.labels

    def __len__(self) -> int:
        return int(self._features.shape[0])

    def _read(self, indices):
        return {"features": self._features[indices], "labels": self.labels[indices]}


class TfdsSource(Source):
    """One official split of a tfds dataset, read record by record with ``tfds.data_source``.

    Images stay uint8; :attr:`normalization` scales them to [0, 1] and, when ``normalize``,
    standardizes them with the dataset's constants (``jaxloss.data.load``'s host arithmetic).

    Args:
      data_source: what ``tfds.data_source(name, split=...)`` returned (records with "image" and
        "label").
      info: the builder's ``DatasetInfo`` (feature shape and class names).
      name: a short description.
      normalization: the device-side :class:`Normalization`.
      metadata: free-form facts.
    """

    def __init__(self, data_source, info, *, name: str, normalization: Normalization, metadata):
        self._data_source = data_source
        label = info.features["label"]
        _describe(
            self,
            num_classes=label.num_classes,
            class_names=label.names,
            name=name,
            metadata=metadata,
            feature_shape=tuple(info.features["image"].shape),
            feature_dtype=np.dtype(np.uint8),
            normalization=normalization,
        )

    def __len__(self) -> int:
        return len(self._data_source)

    def _read(self, indices):
        # One record at a time: tfds' mock data source does not implement batched __getitems__.
        records = [self._data_source[int(i)] for i in indices]
        return {
            "features": np.stack([r["image"] for r in records]),
            "labels": np.asarray([r["label"] for r in records]),
        }


_LABEL_BYTES = 4  # int32, little-endian, in front of each ArrayRecord record


def write_array_record(path: str, features: np.ndarray, labels: np.ndarray) -> None:
    """Writes examples as an ArrayRecord file that :class:`ArrayRecordSource` reads.

    Each record is the label as a little-endian int32 followed by the example's raw feature bytes
    (C order, no compression, one record per group for fast random access).

    Args:
      path: the file to write.
      features: (N, ...) array of any fixed-size dtype (e.g. uint8 images).
      labels: (N,) integer labels.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    features = np.ascontiguousarray(features)
    labels = np.asarray(labels, "<i4")
    if features.shape[:1] != labels.shape:
        raise ValueError(f"features {features.shape} and labels {labels.shape} differ in N.")
    writer = ArrayRecordWriter(path, "group_size:1,uncompressed")
    try:
        for label, example in zip(labels, features, strict=True):
            writer.write(label.tobytes() + example.tobytes())
    finally:
        writer.close()


class ArrayRecordSource(Source):
    """Examples in ArrayRecord files written by :func:`write_array_record`.

    Reads a batch with one batched ArrayRecord lookup and decodes it with one ``np.frombuffer``:
    the fast path for large image datasets (tfds' records hold PNG images decoded one by one).

    Args:
      paths: one file or a list of files (their records in that order).
      feature_shape: the shape of one example's features.
      num_classes: the number of classes.
      feature_dtype: the stored dtype (uint8 for images).
      class_names: one name per class (default "0", "1", ...).
      name: a short description.
      normalization: the device-side :class:`Normalization` (default: cast only).

    Example:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "toy.array_record")
      >>> write_array_record(path, np.arange(12, dtype=np.uint8).reshape(3, 2, 2), [2, 0, 1])
      >>> source = ArrayRecordSource(path, feature_shape=(2, 2), num_classes=3)
      >>> source[1]["features"].tolist(), source.labels.tolist()
      ([[4, 5], [6, 7]], [2, 0, 1])
    """

    def __init__(
        self,
        paths: str | list[str],
        *,
        feature_shape: tuple[int, ...],
        num_classes: int,
        feature_dtype: Any = np.uint8,
        class_names: tuple[str, ...] | None = None,
        name: str = "array_record",
        normalization: Normalization | None = None,
    ):
        import grain

        self._paths = [paths] if isinstance(paths, str) else list(paths)
        # Grain's source: batched random-access reads, picklable for worker processes.
        self._records = grain.sources.ArrayRecordDataSource(self._paths)
        _describe(
            self,
            num_classes=num_classes,
            class_names=class_names or tuple(str(c) for c in range(num_classes)),
            name=name,
            metadata={"paths": self._paths},
            feature_shape=tuple(feature_shape),
            feature_dtype=np.dtype(feature_dtype).newbyteorder("<"),
            normalization=normalization or Normalization(),
        )

    def __len__(self) -> int:
        return len(self._records)

    def _read(self, indices):
        records = self._records.__getitems__(indices.tolist())
        size = _LABEL_BYTES + self.feature_dtype.itemsize * int(np.prod(self.feature_shape))
        raw = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), size)
        return {
            "features": raw[:, _LABEL_BYTES:]
            .copy()
            .view(self.feature_dtype)
            .reshape(len(records), *self.feature_shape),
            "labels": raw[:, :_LABEL_BYTES].copy().view("<i4").ravel(),
        }


class _View(Source):
    """Selected examples of a parent source, optionally relabelled."""

    def __init__(self, parent: Source, indices, labels, *, name: str, metadata):
        self._parent = parent
        self._indices = indices
        self._labels = labels
        _describe(
            self,
            num_classes=parent.num_classes,
            class_names=parent.class_names,
            name=name,
            metadata=metadata,
            feature_shape=parent.feature_shape,
            feature_dtype=parent.feature_dtype,
            normalization=parent.normalization,
        )

    def __len__(self) -> int:
        return len(self._parent) if self._indices is None else int(self._indices.shape[0])

    @functools.cached_property
    def labels(self) -> np.ndarray:
        if self._labels is not None:
            return self._labels
        parent = self._parent.labels
        return parent if self._indices is None else parent[self._indices]

    def _read(self, indices):
        batch = self._parent.read(indices if self._indices is None else self._indices[indices])
        if self._labels is not None:
            batch["labels"] = self._labels[indices]
        return batch


def view(
    source: Source,
    *,
    indices=None,
    labels=None,
    name: str | None = None,
    metadata: dict | None = None,
) -> Source:
    """A source of some of ``source``'s examples, with new labels if given; reads no features.

    Args:
      source: the parent.
      indices: int array (K,) of the parent's examples to keep, in the new order (None: all).
      labels: int array of the new source's length overriding its labels (None: the parent's).
      name: the new name (default: the parent's).
      metadata: the new metadata (default: the parent's).

    Returns:
      A :class:`Source` of K examples: example j is the parent's ``indices[j]``.

    Example:
      >>> ds = Dataset(np.arange(4.0)[:, None], np.array([0, 1, 0, 1]), 2, ("a", "b"), "toy")
      >>> v = view(InMemorySource(ds), indices=[3, 1], labels=[0, 0])
      >>> v.read([0, 1])["features"].ravel().tolist(), v.labels.tolist()
      ([3.0, 1.0], [0, 0])
    """
    if indices is not None:
        indices = np.asarray(indices, np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(source)):
            raise IndexError(f"indices must lie in [0, {len(source)}) for {source.name!r}.")
    size = len(source) if indices is None else indices.shape[0]
    if labels is not None:
        labels = np.asarray(labels, np.int32)
        if labels.shape != (size,):
            raise ValueError(f"labels must have shape ({size},), got {labels.shape}.")
        if labels.size and (labels.min() < 0 or labels.max() >= source.num_classes):
            raise ValueError(f"labels must lie in [0, {source.num_classes}).")
    return _View(
        source,
        indices,
        labels,
        name=source.name if name is None else name,
        metadata=source.metadata if metadata is None else metadata,
    )
