"""The user's own data: a keras-style ``.npz``, an ImageFolder tree, a directory of ArrayRecord
files with their schema, or arrays; checked, split and standardized as the shipped data.

Opening a path checks every file before it returns (labels in range, one feature shape, no empty
split), so a run on bad data stops before it writes anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence

import numpy as np

from jaxloss.data._dataset import Dataset
from jaxloss.data._embedded import _STD_FLOOR, SPLITS, stratified_split
from jaxloss.data._sources import (
    SCHEMA_FILE,
    ArrayRecordSource,
    ArraySource,
    InMemorySource,
    Normalization,
    Source,
    SourceFacts,
    check_labels,
    read_schema,
    view,
)
from jaxloss.data._tfds import _VALIDATION_FRACTION

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolderSource",
    "check_splits",
    "fingerprint",
    "from_arrays",
    "open_path",
    "open_raw",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow modes read as one grey channel; every other mode is read as RGB.
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
# Examples read at once while computing statistics.
_CHUNK = 1024
_NPZ_KEYS = {
    "train": ("x_train", "y_train"),
    "validation": ("x_val", "y_val"),
    "test": ("x_test", "y_test"),
}


def _feature_array(x, key: str, origin: str) -> np.ndarray:
    """uint8 features as they are (images, scaled on device); other numbers as float32."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or x.ndim < 1:
        raise ValueError(
            f"{key}{origin} must be a numeric array (N, ...), got {x.dtype} {x.shape}."
        )
    return x.astype(np.float32)


def _from_arrays(arrays: Mapping, *, class_names, name: str, origin: str) -> dict[str, Source]:
    """The splits present in ``arrays`` (keras' keys) as sources, before any validation split is
    carved; ``origin`` (" in <file>" or "") goes into every message."""
    unknown = sorted(
        set(arrays) - {k for keys in _NPZ_KEYS.values() for k in keys} - {"class_names"}
    )
    if unknown:
        raise ValueError(
            f"unexpected arrays {unknown}{origin}; expected x_train, y_train, x_test, y_test and "
            "optionally x_val, y_val, class_names."
        )
    labels = {}
    for split, (x_key, y_key) in _NPZ_KEYS.items():
        if split == "validation" and x_key not in arrays and y_key not in arrays:
            continue
        for key in (x_key, y_key):
            if arrays.get(key) is None:
                raise ValueError(
                    f"{key} is missing{origin}: the {split} split needs {x_key} and {y_key}."
                )
        y = np.asarray(arrays[y_key])
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"{y_key}{origin} must be integer labels (N,), got {y.dtype} {y.shape}."
            )
        labels[split] = y
    if class_names is not None:
        class_names = tuple(str(c) for c in np.asarray(class_names).reshape(-1))
    if not labels["train"].size:
        raise ValueError(f"y_train{origin} holds no examples: the train split is empty.")
    # Without class names the classes are 0..(largest train label); a larger label elsewhere is an
    # error, named below.
    num_classes = len(class_names) if class_names else int(labels["train"].max()) + 1
    splits = {}
    for split, y in labels.items():
        x_key, y_key = _NPZ_KEYS[split]
        check_labels(y, num_classes, where=lambda i, k=y_key: f"example {i} of {k}{origin}")
        splits[split] = ArraySource(
            _feature_array(arrays[x_key], x_key, origin),
            y,
            num_classes=num_classes,
            class_names=class_names,
            name=f"{name}/{split}",
            metadata={"origin": f"{x_key}, {y_key}{origin}"},
        )
    return splits


def from_arrays(
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    x_val=None,
    y_val=None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    name: str = "arrays",
) -> dict[str, Source]:
    """Train, validation and test sources from arrays, split and standardized as a ``.npz`` path.

    The arrays of ``keras.datasets``: features (N, ...) of one shape, integer labels (N,).
    Without ``x_val``/``y_val`` a stratified 10 % of every class of the train split becomes the
    validation split, drawn from ``seed`` (:func:`jaxloss.data._embedded.stratified_split`, as the
    embedded datasets). uint8 features stay uint8 (images, scaled to [0, 1] on device); other
    numbers become float32. The ``normalization`` of every split standardizes with the mean and
    std of the train split: per feature for (N, D) tables, per channel for (N, H, W, C) images,
    one value otherwise. Pass the result as ``train_and_evaluate(config, workdir, splits=...)``.

    Args:
      x_train, y_train, x_test, y_test: the splits' features and labels.
      x_val, y_val: the validation split (None: carved from train).
      class_names: one name per class (None: "0", "1", ... up to the largest train label).
      seed: the seed of the carved validation split.
      name: a short description; the sources are named ``<name>/<split>``.

    Returns:
      ``{"train": Source, "validation": Source, "test": Source}``.

    Raises:
      ValueError: a label outside [0, number of classes) (named, with its array), features of
        different shapes, an empty split.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> x, y = rng.normal(size=(100, 3)), np.arange(100) % 2
      >>> splits = from_arrays(x[:80], y[:80], x[80:], y[80:])
      >>> [len(s) for s in splits.values()], splits["train"].num_classes
      ([72, 8, 20], 2)
    """
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    if x_val is not None or y_val is not None:
        arrays.update(x_val=x_val, y_val=y_val)
    raw = _from_arrays(arrays, class_names=class_names, name=name, origin="")
    return _finish(raw, seed=seed, origin=name)


class ImageFolderSource(Source):
    """One split of an ImageFolder tree (``<root>/<split>/<class name>/*.png|jpg``), decoded with
    Pillow when a batch is read (in the input pipeline's worker processes, if any).

    Images are uint8 (H, W, C), C = 1 for grey images and 3 for everything else (RGB).

    Args:
      files: the image files.
      labels: their classes, (N,) integers in [0, len(class_names)).
      class_names: one name per class.
      feature_shape: (H, W, C) of every image.
      name: a short description.
      normalization: the device-side :class:`Normalization` (default: cast only).

    Example:
      >>> import tempfile
      >>> from PIL import Image
      >>> root = tempfile.mkdtemp()
      >>> for i in range(2):
      ...     Image.fromarray(np.full((3, 4), 10 * i, np.uint8)).save(f"{root}/{i}.png")
      >>> source = ImageFolderSource([f"{root}/0.png", f"{root}/1.png"], [0, 1],
      ...                            class_names=("dark", "light"), feature_shape=(3, 4, 1),
      ...                            name="toy")
      >>> batch = source.read([1])
      >>> batch["features"].shape, batch["features"].max(), batch["labels"].tolist()
      ((1, 3, 4, 1), np.uint8(10), [1])
    """

    def __init__(
        self,
        files: Sequence[str],
        labels,
        *,
        class_names: Sequence[str],
        feature_shape: tuple[int, int, int],
        name: str,
        normalization: Normalization | None = None,
    ):
        self._files = list(files)
        labels = np.asarray(labels, np.int32)
        check_labels(labels, len(class_names), where=lambda i: self._files[i])
        self.facts = SourceFacts(
            num_classes=len(class_names),
            class_names=class_names,
            name=name,
            metadata={"files": len(self._files)},
            feature_shape=feature_shape,
            feature_dtype=np.uint8,
            normalization=normalization or Normalization(),
        )
        self.labels = labels

    def __len__(self) -> int:
        return len(self._files)

    def _read(self, indices):
        images = np.empty((len(indices), *self.feature_shape), np.uint8)
        for row, index in enumerate(indices):
            images[row] = _decode(self._files[index], self.feature_shape)
        return {"features": images, "labels": self.labels[indices]}


def _image_shape(path: str) -> tuple[int, int, int]:
    """(H, W, C) from the image's header (nothing decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            return height, width, 1 if image.mode in _GREY_MODES else 3
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path} cannot be read as an image: {error}") from None


def _decode(path: str, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L" if shape[-1] == 1 else "RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path} cannot be decoded as an image: {error}") from None
    pixels = pixels.reshape(*pixels.shape[:2], -1)
    if pixels.shape != tuple(shape):
        raise ValueError(f"{path} is a {pixels.shape} image where {tuple(shape)} was expected.")
    return pixels


def _image_folder(root: str) -> dict[str, Source]:
    """The splits of an ImageFolder tree, every image's header checked."""
    base = os.path.basename(os.path.normpath(root))
    present = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    for split in ("train", "test"):
        if split not in present:
            raise ValueError(
                f"{os.path.join(root, split)} is missing: an ImageFolder tree needs "
                "<root>/train/<class name>/*.png|jpg, <root>/test/... and optionally "
                "<root>/validation/..."
            )
    train_dir = os.path.join(root, "train")
    class_names = sorted(
        d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d))
    )
    if not class_names:
        raise ValueError(f"{train_dir} holds no class folders (<class name>/*.png|jpg).")
    shape, first = None, None
    splits = {}
    for split in present:
        directory = os.path.join(root, split)
        files, labels = [], []
        for folder in sorted(os.listdir(directory)):
            path = os.path.join(directory, folder)
            if not os.path.isdir(path) or folder.startswith("."):
                continue
            if folder not in class_names:
                raise ValueError(
                    f"{path} is not a class of {train_dir} (classes: {', '.join(class_names)})."
                )
            for file in sorted(os.listdir(path)):
                if file.lower().endswith(IMAGE_SUFFIXES) and not file.startswith("."):
                    files.append(os.path.join(path, file))
                    labels.append(class_names.index(folder))
        for file in files:
            file_shape = _image_shape(file)
            if shape is None:
                shape, first = file_shape, file
            elif file_shape != shape:
                raise ValueError(
                    f"{file} is a {file_shape} image but {first} is {shape}: the images of "
                    f"{root} must all have one shape (H, W, C)."
                )
        if not files:
            raise ValueError(
                f"{directory} holds no .png or .jpg images: the {split} split is empty."
            )
        splits[split] = ImageFolderSource(
            files, labels, class_names=class_names, feature_shape=shape, name=f"{base}/{split}"
        )
    return splits


def _array_record_folder(root: str) -> dict[str, Source]:
    """The splits listed in ``<root>/schema.json``, every file checked against it."""
    schema = read_schema(root)
    base = os.path.basename(os.path.normpath(root))
    where = os.path.join(root, SCHEMA_FILE)
    listed = schema["splits"]
    extra = sorted(set(listed) - set(SPLITS))
    if extra:
        raise ValueError(f"{where} lists splits {extra}; the splits are {', '.join(SPLITS)}.")
    for split in ("train", "test"):
        if split not in listed:
            raise ValueError(f"{where} lists no {split} split (it lists: {', '.join(listed)}).")
    if schema.get("num_classes") is None:
        raise ValueError(
            f"{where} records no num_classes: write the files with "
            "write_array_record(..., num_classes=C)."
        )
    return {
        split: ArrayRecordSource(
            os.path.join(root, listed[split]["file"]),
            feature_shape=tuple(schema["feature_shape"]),
            feature_dtype=schema["feature_dtype"],
            num_classes=schema["num_classes"],
            class_names=schema.get("class_names"),
            name=f"{base}/{split}",
        )
        for split in SPLITS
        if split in listed
    }


def open_raw(path: str) -> dict[str, Source]:
    """The splits stored at ``path`` as they are: train, test and, when stored, validation.

    Nothing is carved or standardized (:func:`open_path` does that); every file is checked.

    Args:
      path: a ``.npz`` file, a directory with ``schema.json`` (ArrayRecord files) or an
        ImageFolder tree.

    Raises:
      ValueError: a path of none of these kinds, or a bad file (the message names it).
    """
    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} cannot be read as a .npz file: {error}") from None
        raw = _from_arrays(
            arrays,
            class_names=arrays.pop("class_names", None),
            name=os.path.basename(path)[: -len(".npz")],
            origin=f" in {path}",
        )
    elif os.path.isfile(os.path.join(path, SCHEMA_FILE)):
        raw = _array_record_folder(path)
    elif os.path.isdir(path):
        raw = _image_folder(path)
    else:
        raise ValueError(
            f"{path!r} is neither a registered dataset nor a .npz file, a directory of ArrayRecord "
            f"files with its {SCHEMA_FILE}, or an ImageFolder tree (<root>/<split>/<class>/*.png)."
        )
    _check(raw, origin=path)
    return raw


def open_path(path: str, *, seed: int = 0) -> dict[str, Source]:
    """The train, validation and test splits of the user's data at ``path``, checked and
    standardized: what ``config.data.name = path`` trains on.

    The formats (see "Training on your own data" in docs/guide/data.md):

    - a ``.npz`` file with keras' arrays (``x_train``, ``y_train``, ``x_test``, ``y_test``, optional
      ``x_val``, ``y_val``, ``class_names``), read into memory;
    - an ImageFolder tree, ``<path>/<split>/<class name>/*.png|jpg`` (splits ``train``, ``test``,
      optional ``validation``; classes are the sorted folder names of ``train``), decoded when a
      batch is read;
    - a directory of ArrayRecord files with the ``schema.json`` that
      :func:`jaxloss.data.write_array_record` keeps (``python -m jaxloss.data.convert`` makes one
      from the other two), read on demand.

    Every file is checked first: labels in [0, C) (the message names the label and the file), one
    feature shape, at least one example per split. Without a stored validation split, a stratified
    10 % of each class of train becomes one, drawn from ``seed``. Features are standardized on
    device with train-split statistics (:func:`from_arrays` says how); uint8 images are scaled to
    [0, 1] first.

    Returns:
      ``{"train": Source, "validation": Source, "test": Source}``.

    Example:
      >>> import tempfile
      >>> path = f"{tempfile.mkdtemp()}/toy.npz"
      >>> x, y = np.zeros((40, 4, 4), np.uint8), np.arange(40) % 2
      >>> np.savez(path, x_train=x, y_train=y, x_test=x[:6], y_test=y[:6], class_names=["a", "b"])
      >>> splits = open_path(path)
      >>> {split: len(s) for split, s in splits.items()}, splits["train"].class_names
      ({'train': 36, 'validation': 4, 'test': 6}, ('a', 'b'))
    """
    return _finish(open_raw(path), seed=seed, origin=os.fspath(path))


def _check(splits: Mapping[str, Source], *, origin: str) -> None:
    """The checks every set of splits passes: train and test present, every split a non-empty
    source of one feature shape, dtype and class set, every label in range."""
    for split in ("train", "test"):
        if split not in splits:
            raise ValueError(f"{origin} has no {split} split.")
    train = splits["train"]
    for split, source in splits.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in {origin}; the splits are {SPLITS}.")
        if not isinstance(source, Source):
            raise ValueError(
                f"the {split} split of {origin} must be a jaxloss.data.Source, got "
                f"{type(source).__name__}."
            )
        if not len(source):
            raise ValueError(f"the {split} split of {origin} ({source.name}) holds no examples.")
        for fact in ("feature_shape", "feature_dtype", "num_classes"):
            if getattr(source, fact) != getattr(train, fact):
                raise ValueError(
                    f"the {split} split of {origin} has {fact} {getattr(source, fact)} where the "
                    f"train split has {getattr(train, fact)}."
                )
        # Sources read their labels once (streaming through the records) and check each batch.
        check_labels(
            source.labels, source.num_classes, where=lambda i, s=source: f"example {i} of {s.name}"
        )


def check_splits(splits: Mapping[str, Source | Dataset]) -> dict[str, Source]:
    """Checks train, validation and test sources given from Python (e.g. by :func:`from_arrays`).

    Args:
      splits: ``{"train": ..., "validation": ..., "test": ...}``, each a :class:`Source` or a
        :class:`Dataset` (held as an :class:`InMemorySource`).

    Returns:
      The splits as sources, in the order train, validation, test.

    Raises:
      ValueError: a split missing or empty, splits that differ in feature shape, dtype, classes or
        normalization (the one of train applies to all), a label outside [0, C).

    Example:
      >>> splits = from_arrays(np.zeros((20, 2)), np.arange(20) % 2, np.zeros((4, 2)), [0, 1, 0, 1])
      >>> list(check_splits(splits))
      ['train', 'validation', 'test']
      >>> check_splits({"train": splits["train"], "test": splits["test"]})
      Traceback (most recent call last):
        ...
      ValueError: ...validation...
    """
    if not isinstance(splits, Mapping) or set(splits) != set(SPLITS):
        given = sorted(splits) if isinstance(splits, Mapping) else type(splits).__name__
        raise ValueError(f"splits must map exactly {', '.join(SPLITS)} to sources, got {given}.")
    splits = {
        split: InMemorySource(s) if isinstance(s, Dataset) else s
        for split, s in ((split, splits[split]) for split in SPLITS)
    }
    _check(splits, origin="splits")
    for split, source in splits.items():
        if source.normalization != splits["train"].normalization:
            raise ValueError(
                f"the {split} split's normalization {source.normalization} differs from the train "
                f"split's {splits['train'].normalization}, which the model applies to every split."
            )
    return splits


def _finish(raw: dict[str, Source], *, seed: int, origin: str) -> dict[str, Source]:
    """Carves the validation split if there is none, checks, and standardizes every split with
    the train split's statistics."""
    train = raw["train"]
    if "validation" not in raw:
        parts = stratified_split(
            train.labels, seed=seed, fractions=(("validation", _VALIDATION_FRACTION),), rest="train"
        )
        base = train.name.rsplit("/", 1)[0]
        if not parts["validation"].size:
            raise ValueError(
                f"the train split of {origin} has too few examples per class to carve a "
                f"validation split ({_VALIDATION_FRACTION:.0%} of each); provide one."
            )
        metadata = {**train.metadata, "split_seed": seed}
        raw = {
            **raw,
            "train": view(train, indices=parts["train"], name=f"{base}/train", metadata=metadata),
            "validation": view(
                train, indices=parts["validation"], name=f"{base}/validation", metadata=metadata
            ),
        }
    _check(raw, origin=origin)
    normalization = _standardization(raw["train"])
    splits = {split: raw[split] for split in SPLITS}
    for source in splits.values():
        source.facts = dataclasses.replace(source.facts, normalization=normalization)
    return splits


def _standardization(train: Source) -> Normalization:
    """Scaling (uint8 / 255) and the train split's mean and std, accumulated in float64 chunk by
    chunk: per feature of (D,) examples, per channel of (H, W, C) ones, one value otherwise."""
    divisor = 255.0 if train.feature_dtype == np.uint8 else 1.0
    ndim = len(train.feature_shape)
    # Axes of a batch (N, *feature_shape) that the statistics reduce over.
    axes = tuple(range(ndim)) if ndim in (1, 3) else tuple(range(ndim + 1))
    total = squares = 0.0
    for start in range(0, len(train), _CHUNK):
        x = train.read(np.arange(start, min(start + _CHUNK, len(train))))["features"]
        x = x.astype(np.float64) / divisor
        total = total + x.sum(axis=axes)
        squares = squares + np.square(x).sum(axis=axes)
    count = len(train) * np.prod(train.feature_shape) / np.size(total)
    mean = np.atleast_1d(total / count)
    std = np.maximum(np.sqrt(np.maximum(np.atleast_1d(squares / count) - mean**2, 0.0)), _STD_FLOOR)
    return Normalization(divisor, tuple(mean.tolist()), tuple(std.tolist()))


def fingerprint(splits: Mapping[str, Source]) -> dict[str, dict]:
    """What a resumed run compares to know its data did not change: each split's size and the
    SHA-256 of its labels (int32, little-endian, in order).

    Example:
      >>> splits = from_arrays(np.zeros((20, 1)), np.arange(20) % 2, np.zeros((4, 1)), [0, 1, 0, 1])
      >>> fingerprint(splits)["test"]["num_examples"]
      4
    """
    return {
        split: {
            "num_examples": len(source),
            "labels_sha256": hashlib.sha256(np.asarray(source.labels, "<i4").tobytes()).hexdigest(),
        }
        for split, source in splits.items()
    }
