"""Random-access sources: what the streaming input pipeline reads, one batch of indices at a time.

A source keeps only its labels in memory (read once, by streaming through the records, when first
asked for); features are read on demand. The long-tail and label-noise transforms become views
(index selections, label overrides) over any source.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxloss.data._dataset import Dataset

__all__ = [
    "SCHEMA_FILE",
    "SourceFacts",
    "ArrayRecordSource",
    "ArraySource",
    "InMemorySource",
    "Normalization",
    "Source",
    "TfdsSource",
    "check_labels",
    "read_schema",
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
        """``features`` (any shape, channels last) as standardized float32; jittable. A NumPy
        array is normalized on the host with the same float32 arithmetic (and stays NumPy)."""
        xp = np if isinstance(features, np.ndarray) else jnp
        x = xp.asarray(features).astype(xp.float32)
        if self.divisor != 1.0:
            x = x / xp.float32(self.divisor)
        if self.mean is not None:
            x = (x - xp.asarray(self.mean, xp.float32)) / xp.asarray(self.std, xp.float32)
        return x


@dataclasses.dataclass(frozen=True)
class SourceFacts:
    """What every :class:`Source` says about its examples besides the examples themselves.

    Attributes:
      num_classes: the number of classes.
      class_names: one name per class.
      name: a short description, e.g. ``"cifar10/train"``.
      feature_shape: the shape of one example's features.
      feature_dtype: their dtype as stored (uint8 for images).
      normalization: the :class:`Normalization` to apply on device.
      metadata: free-form facts about how the data was made.

    Example:
      >>> SourceFacts(3, "abc", "toy", feature_shape=[2], feature_dtype="uint8").class_names
      ('a', 'b', 'c')
    """

    num_classes: int
    class_names: tuple[str, ...]
    name: str
    feature_shape: tuple[int, ...]
    feature_dtype: np.dtype
    normalization: Normalization = Normalization()
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # Frozen: the canonical types are set once, at construction.
        for field, value in (
            ("num_classes", int(self.num_classes)),
            ("class_names", tuple(str(c) for c in self.class_names)),
            ("feature_shape", tuple(int(d) for d in self.feature_shape)),
            ("feature_dtype", np.dtype(self.feature_dtype)),
            ("metadata", dict(self.metadata)),
        ):
            object.__setattr__(self, field, value)


def _fact(field: str) -> property:
    """A read-only attribute of a source that its :class:`SourceFacts` holds."""
    return property(lambda self: getattr(self.facts, field), doc=f"``facts.{field}``.")


class Source(abc.ABC):
    """Labelled examples with random access by index: the data model of :mod:`jaxloss.data`
    (:func:`jaxloss.data.load` materializes one into a :class:`Dataset`).

    Attributes:
      facts: the :class:`SourceFacts` (classes, name, feature layout, normalization, metadata),
        also readable one by one as the attributes below.

    Example:
      A source is a length, a ``_read`` of a batch of indices and its facts:

      >>> class Squares(Source):
      ...     facts = SourceFacts(num_classes=2, class_names=("even", "odd"), name="squares",
      ...                         feature_shape=(1,), feature_dtype=np.dtype(np.int64))
      ...     def __len__(self):
      ...         return 5
      ...     def _read(self, indices):
      ...         return {"features": indices[:, None] ** 2, "labels": indices % 2}
      >>> source = Squares()
      >>> source.read([3, 1])["features"].ravel().tolist(), source.labels.tolist()
      ([9, 1], [0, 1, 0, 1, 0])
    """

    facts: SourceFacts
    num_classes = _fact("num_classes")
    class_names = _fact("class_names")
    name = _fact("name")
    metadata = _fact("metadata")
    feature_shape = _fact("feature_shape")
    feature_dtype = _fact("feature_dtype")
    normalization = _fact("normalization")

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

    def materialize(self) -> Dataset:
        """Every example in host memory, normalized there as :attr:`normalization` would on device:
        the :class:`Dataset` that :func:`jaxloss.data.load` returns.

        Example:
          >>> source = ArraySource(np.array([[0], [255]], np.uint8), [0, 1], num_classes=2,
          ...                      normalization=Normalization(255.0))
          >>> source.materialize().features.ravel().tolist()
          [0.0, 1.0]
        """
        batch = self.read(np.arange(len(self)))
        return Dataset(
            self.normalization(batch["features"]),
            batch["labels"],
            self.num_classes,
            self.class_names,
            self.name,
            self.metadata,
        )

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """One record, ``{"features": feature_shape array, "labels": int32 scalar}``."""
        batch = self.read([index])
        return {"features": batch["features"][0], "labels": batch["labels"][0]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} examples)"


class ArraySource(Source):
    """Examples held in host memory as arrays, stored in their own dtype (uint8 images stay uint8).

    Args:
      features: (N, ...) array of a numeric dtype.
      labels: (N,) integers in [0, num_classes).
      num_classes: the number of classes.
      class_names: one name per class (default "0", "1", ...).
      name: a short description.
      normalization: the device-side :class:`Normalization` (default: cast only).
      metadata: free-form facts.

    Raises:
      ValueError: labels that are not integers, lie outside [0, num_classes) (the message names
        the first such label), or whose length differs from the features'.

    Example:
      >>> source = ArraySource(np.arange(6, dtype=np.uint8).reshape(3, 2), [1, 0, 1], num_classes=2)
      >>> source.feature_dtype, source.read([2])["features"].tolist()
      (dtype('uint8'), [[4, 5]])
    """

    def __init__(
        self,
        features,
        labels,
        *,
        num_classes: int,
        class_names: tuple[str, ...] | None = None,
        name: str = "arrays",
        normalization: Normalization | None = None,
        metadata: dict | None = None,
    ):
        features, labels = np.asarray(features), np.asarray(labels)
        if labels.ndim != 1 or features.shape[:1] != labels.shape:
            raise ValueError(
                f"labels of {name} must have shape (N,) matching features.shape[0]; got features "
                f"{features.shape} and labels {labels.shape}."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels of {name} must be integers, got dtype {labels.dtype}.")
        check_labels(labels, num_classes, where=lambda i: f"example {i} of {name}")
        self._features = features
        self.facts = SourceFacts(
            num_classes=num_classes,
            class_names=class_names or tuple(str(c) for c in range(num_classes)),
            name=name,
            metadata=metadata or {},
            feature_shape=features.shape[1:],
            feature_dtype=features.dtype,
            normalization=normalization or Normalization(),
        )
        self.labels = labels.astype(np.int32)

    def __len__(self) -> int:
        return int(self._features.shape[0])

    def _read(self, indices):
        return {"features": self._features[indices], "labels": self.labels[indices]}


class InMemorySource(ArraySource):
    """A :class:`Dataset` held in host memory (the embedded datasets).

    Example:
      >>> ds = Dataset(np.arange(6.0).reshape(3, 2), np.array([0, 1, 1]), 2, ("a", "b"), "toy")
      >>> source = InMemorySource(ds)
      >>> source.read([2, 0])["features"].tolist(), source[1]["labels"]
      ([[4.0, 5.0], [0.0, 1.0]], np.int32(1))
    """

    def __init__(self, dataset: Dataset):
        super().__init__(
            dataset.features,
            dataset.labels,
            num_classes=dataset.num_classes,
            class_names=dataset.class_names,
            name=dataset.name,
            metadata=dataset.metadata,
        )


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

    Example:
      :func:`jaxloss.data.load_source` makes one for a tfds name; here on tfds' stand-in records
      (``mock_data``: no download, no prepared files):

      >>> import tensorflow_datasets as tfds
      >>> from jaxloss.data import load_source
      >>> with tfds.testing.mock_data(num_examples=5):
      ...     source = load_source("mnist", split="test")
      >>> type(source).__name__, len(source), source.feature_shape, source.feature_dtype
      ('TfdsSource', 5, (28, 28, 1), dtype('uint8'))
    """

    def __init__(self, data_source, info, *, name: str, normalization: Normalization, metadata):
        self._data_source = data_source
        label = info.features["label"]
        self.facts = SourceFacts(
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
_SUFFIX = ".array_record"
SCHEMA_FILE = "schema.json"
_SCHEMA_FORMAT = "jaxloss.array_record/1"


def check_labels(labels: np.ndarray, num_classes: int, *, where: Callable[[int], str]) -> None:
    """Raises a ValueError naming the first label outside [0, num_classes) and where it is.

    Args:
      labels: integer array (N,).
      num_classes: C.
      where: position in ``labels`` -> where that label is stored (e.g. "record 7 of a.array_record").

    Example:
      >>> check_labels(np.array([0, 2, 1]), 3, where=lambda i: f"row {i} of y.npy")
      >>> check_labels(np.array([0, 3, 1]), 3, where=lambda i: f"row {i} of y.npy")
      Traceback (most recent call last):
        ...
      ValueError: label 3 of row 1 of y.npy is outside [0, 3) (3 classes).
    """
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(
            f"label {labels[bad[0]]} of {where(int(bad[0]))} is outside [0, {num_classes}) "
            f"({num_classes} classes)."
        )


def read_schema(directory: str) -> dict | None:
    """The ``schema.json`` that :func:`write_array_record` keeps beside its files, or None.

    It holds ``feature_shape``, ``feature_dtype``, ``num_classes`` and ``class_names`` (None when
    never given), and per split (a file's name without ``.array_record``) its ``file`` and
    ``num_examples``.

    Example:
      >>> import tempfile
      >>> directory = tempfile.mkdtemp()
      >>> read_schema(directory) is None
      True
      >>> write_array_record(f"{directory}/train.array_record", np.zeros((3, 2), np.uint8),
      ...                    [0, 1, 1], class_names=["a", "b"])
      >>> schema = read_schema(directory)
      >>> schema["feature_shape"], schema["feature_dtype"], schema["splits"]["train"]
      ([2], 'uint8', {'file': 'train.array_record', 'num_examples': 3})
    """
    path = os.path.join(directory, SCHEMA_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            schema = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable JSON schema: {error}") from None
    if not isinstance(schema, dict) or schema.get("format") != _SCHEMA_FORMAT:
        raise ValueError(f"{path} is not a schema written by jaxloss.data.write_array_record.")
    return schema


def _merge_schema(schema: dict | None, path: str, **facts) -> dict:
    """``schema`` with the facts of one more file checked against it (None: the facts as given)."""
    merged = dict(schema or {"format": _SCHEMA_FORMAT, "splits": {}})
    for key, value in facts.items():
        known = merged.get(key)
        if value is not None and known is not None and known != value:
            raise ValueError(
                f"{path}: {key} {value} differs from {known} of the other files in "
                f"{os.path.join(os.path.dirname(path), SCHEMA_FILE)}."
            )
        merged[key] = known if value is None else value
    return merged


def write_array_record(
    path: str,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Writes examples as an ArrayRecord file that :class:`ArrayRecordSource` reads, and records
    it in the ``schema.json`` beside it.

    Each record is the label as a little-endian int32 followed by the example's raw feature bytes
    (C order, little-endian, no compression, one record per group for fast random access). The
    schema (:func:`read_schema`) holds the feature shape and dtype, the classes and, per file
    (its name without ``.array_record`` is its split), the number of examples: a reader that
    asks for another shape or dtype, or finds fewer records, is refused instead of reading garbage.
    Files written into one directory must agree on shape, dtype and classes. For data that does
    not fit in memory, ``python -m jaxloss.data.convert`` writes such a directory chunk by chunk.

    Args:
      path: the file to write, e.g. ``".../train.array_record"``.
      features: (N, ...) array of any fixed-size dtype (e.g. uint8 images).
      labels: (N,) integer labels, in [0, num_classes) when ``num_classes`` is given.
      num_classes: the number of classes (None: not recorded).
      class_names: one name per class (None: not recorded).

    Example:
      >>> import tempfile
      >>> path = f"{tempfile.mkdtemp()}/train.array_record"
      >>> write_array_record(path, np.arange(8, dtype=np.uint8).reshape(4, 2), [0, 1, 2, 0],
      ...                    num_classes=3)
      >>> ArrayRecordSource(path, feature_shape=(2,), num_classes=3)[1]["features"].tolist()
      [2, 3]
    """
    features = np.asarray(features)
    _write_records(
        path,
        [(features, labels)],
        feature_shape=features.shape[1:],
        feature_dtype=features.dtype,
        num_classes=num_classes,
        class_names=class_names,
    )


def _write_records(
    path: str,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    feature_shape: tuple[int, ...],
    feature_dtype: np.dtype,
    num_classes: int | None,
    class_names: Sequence[str] | None,
) -> int:
    """Streams (features, labels) chunks into ``path`` and then records it in the schema; returns
    the number of examples."""
    from array_record.python.array_record_module import ArrayRecordWriter

    dtype = np.dtype(feature_dtype).newbyteorder("<")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        num_classes = len(class_names) if num_classes is None else num_classes
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries for {num_classes} classes."
            )
    directory = os.path.dirname(os.path.abspath(path))
    schema = _merge_schema(
        read_schema(directory),
        path,
        feature_shape=[int(d) for d in feature_shape],
        feature_dtype=dtype.name,
        num_classes=num_classes,
        class_names=class_names,
    )
    count = 0
    writer = ArrayRecordWriter(path, "group_size:1,uncompressed")
    try:
        for features, labels in chunks:
            features = np.ascontiguousarray(features, dtype)
            labels = np.asarray(labels)
            if features.shape[1:] != tuple(feature_shape) or features.shape[:1] != labels.shape:
                raise ValueError(
                    f"{path}: examples of shape {tuple(feature_shape)} and labels (N,) expected, "
                    f"got features {features.shape} and labels {labels.shape}."
                )
            if not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"{path}: labels must be integers, got dtype {labels.dtype}.")
            if num_classes is not None:
                check_labels(labels, num_classes, where=lambda i, c=count: f"example {c + i}")
            for label, example in zip(labels.astype("<i4"), features, strict=True):
                writer.write(label.tobytes() + example.tobytes())
            count += len(labels)
    finally:
        writer.close()
    split = _split_name(path)
    schema["splits"] = {
        **schema["splits"],
        split: {"file": os.path.basename(path), "num_examples": count},
    }
    with open(os.path.join(directory, SCHEMA_FILE), "w") as f:
        json.dump(schema, f, indent=1)
    return count


def _split_name(path: str) -> str:
    name = os.path.basename(path)
    return name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else os.path.splitext(name)[0]


class ArrayRecordSource(Source):
    """Examples in ArrayRecord files written by :func:`write_array_record`.

    Reads a batch with one batched ArrayRecord lookup and decodes it with one ``np.frombuffer``:
    the fast path for large image datasets (tfds' records hold PNG images decoded one by one).

    Every file is checked when the source is made: it must open (a truncated or damaged file is
    named), hold at least one record, and agree with the ``schema.json`` beside it (feature shape,
    dtype, number of classes, number of records) and, schema or not, its first record must have
    the size that ``feature_shape`` and ``feature_dtype`` give. Every batch read checks its labels
    against [0, num_classes) and names the file of a bad one.

    Args:
      paths: one file or a list of files (their records in that order).
      feature_shape: the shape of one example's features.
      num_classes: the number of classes.
      feature_dtype: the stored dtype (uint8 for images).
      class_names: one name per class (default "0", "1", ...).
      name: a short description.
      normalization: the device-side :class:`Normalization` (default: cast only).

    Raises:
      ValueError: a file that cannot be read, is empty, or does not match the arguments.

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
        feature_dtype: np.dtype | type | str = np.uint8,
        class_names: tuple[str, ...] | None = None,
        name: str = "array_record",
        normalization: Normalization | None = None,
    ):
        import grain

        self._paths = [paths] if isinstance(paths, str) else list(paths)
        if not self._paths:
            raise ValueError(f"{name}: paths names no file.")
        self.facts = SourceFacts(
            num_classes=num_classes,
            class_names=class_names or tuple(str(c) for c in range(num_classes)),
            name=name,
            metadata={"paths": self._paths},
            feature_shape=tuple(int(d) for d in feature_shape),
            feature_dtype=np.dtype(feature_dtype).newbyteorder("<"),
            normalization=normalization or Normalization(),
        )
        self._record_size = _LABEL_BYTES + self.feature_dtype.itemsize * math.prod(
            self.feature_shape
        )
        sizes = [self._check_file(path, grain) for path in self._paths]
        # Record i of the source is record i - offsets[f] of file f.
        self._offsets = np.cumsum([0, *sizes])
        # Grain's source: batched random-access reads, picklable for worker processes.
        self._records = grain.sources.ArrayRecordDataSource(self._paths)

    def _check_file(self, path: str, grain) -> int:
        """The number of records in ``path``, after checking it against the schema and the
        arguments."""
        if not os.path.isfile(path):
            raise ValueError(f"{self.name}: ArrayRecord file {path} does not exist.")
        try:
            records = grain.sources.ArrayRecordDataSource([path])
            size = len(records)
            first = records[0] if size else b""
        except Exception as error:  # array_record raises RuntimeError, sometimes without a message
            raise ValueError(
                f"{path} cannot be read as an ArrayRecord file (truncated or damaged?): "
                f"{type(error).__name__}: {error or 'no details'}."
            ) from None
        if not size:
            raise ValueError(f"{path} holds no records: {self.name} would be an empty split.")
        schema = read_schema(os.path.dirname(os.path.abspath(path))) or {"splits": {}}
        entry = schema["splits"].get(_split_name(path))
        if entry is not None and entry.get("file") == os.path.basename(path):
            expected = {
                "feature_shape": (list(self.feature_shape), schema["feature_shape"]),
                "feature_dtype": (self.feature_dtype.name, schema["feature_dtype"]),
                "num_classes": (self.num_classes, schema.get("num_classes") or self.num_classes),
            }
            wrong = [key for key, (given, stored) in expected.items() if given != stored]
            if wrong:
                raise ValueError(
                    ", ".join(f"{key}={expected[key][0]}" for key in wrong)
                    + f" does not match {path}: its {SCHEMA_FILE} says "
                    + ", ".join(f"{key}={expected[key][1]}" for key in wrong)
                    + "."
                )
            if size != entry["num_examples"]:
                raise ValueError(
                    f"{path} holds {size} records where its {SCHEMA_FILE} says "
                    f"{entry['num_examples']}: the file is truncated or was replaced."
                )
        if len(first) != self._record_size:
            raise ValueError(
                f"{path} holds records of {len(first) - _LABEL_BYTES} feature bytes, but "
                f"feature_shape={self.feature_shape} of {self.feature_dtype.name} needs "
                f"{self._record_size - _LABEL_BYTES}."
            )
        return size

    def _locate(self, index: int) -> str:
        """Where record ``index`` of the source is: "record r of <file>"."""
        f = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return f"record {index - self._offsets[f]} of {self._paths[f]}"

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _read(self, indices):
        records = self._records.__getitems__(indices.tolist())
        sizes = np.fromiter((len(r) for r in records), np.int64, len(records))
        if np.any(sizes != self._record_size):
            bad = int(np.flatnonzero(sizes != self._record_size)[0])
            raise ValueError(
                f"{self._locate(int(indices[bad]))} has {sizes[bad]} bytes where "
                f"{self._record_size} were expected."
            )
        raw = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), self._record_size)
        labels = raw[:, :_LABEL_BYTES].copy().view("<i4").ravel()
        check_labels(labels, self.num_classes, where=lambda i: self._locate(int(indices[i])))
        return {
            "features": raw[:, _LABEL_BYTES:]
            .copy()
            .view(self.feature_dtype)
            .reshape(len(records), *self.feature_shape),
            "labels": labels,
        }


class _View(Source):
    """Selected examples of a parent source, optionally relabelled."""

    def __init__(self, parent: Source, indices, labels, *, name: str, metadata):
        self._parent = parent
        self._indices = indices
        self._labels = labels
        self.facts = dataclasses.replace(parent.facts, name=name, metadata=metadata)

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
