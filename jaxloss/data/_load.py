"""``load``: one entry point for the embedded and the tfds datasets."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from jaxloss._validation import check_integer
from jaxloss.data._dataset import Dataset
from jaxloss.data._embedded import EMBEDDED_DATASETS, SPLITS, load_embedded
from jaxloss.data._own import fingerprint, open_path
from jaxloss.data._sources import InMemorySource, Source
from jaxloss.data._synthetic import SYNTHETIC_DATASETS, teacher_dataset
from jaxloss.data._tfds import TFDS_DATASETS, tfds_source

__all__ = ["available_datasets", "load", "load_source", "load_splits", "provenance"]


def available_datasets() -> tuple[str, ...]:
    """Names accepted by :func:`load`: the embedded ones first, then the tfds ones, then the
    synthetic ones.

    Example:
      >>> available_datasets()[:2]
      ('digits', 'iris')
    """
    return EMBEDDED_DATASETS + TFDS_DATASETS + SYNTHETIC_DATASETS


def load(
    name: str,
    *,
    split: str,
    seed: int = 0,
    data_dir: str | None = None,
    normalize: bool = True,
    **options,
) -> Dataset:
    """Loads one split of a dataset into host memory.

    Embedded datasets (``digits``, ``iris``, ``wine``, ``breast_cancer``) come from the files bundled
    with scikit-learn and need no network: a stratified 60/20/20 train/validation/test split drawn
    from ``seed``, standardized with the mean and std of the train split only. ``digits`` gives
    (N, 8, 8, 1) images; the tables give (N, D) features.

    tfds datasets (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn_cropped``) are read
    with ``tfds.data_source`` from ``data_dir`` and must have been prepared beforehand (the error
    says how). "validation" is a seeded 10 % of the official train split, "train" the other 90 %,
    "test" the official test split. Images are float32 NHWC, scaled to [0, 1] and, when
    ``normalize``, standardized with fixed per-channel constants.

    ``teacher`` is a synthetic problem with any number of classes (:func:`teacher_dataset`; its
    sizes come in ``options``). A path is the user's own data (:func:`open_path`).

    The split is :func:`load_source`'s, materialized (:meth:`Source.materialize`): one data model,
    whole in memory here, streamed in training.

    Args:
      name: one of :func:`available_datasets`, or a path.
      split: "train", "validation" or "test".
      seed: seed of the train/validation(/test) split.
      data_dir: tfds data directory (None: tfds' default); ignored by embedded datasets.
      normalize: tfds only; False keeps pixels in [0, 1] (e.g. to pad crops with black before
        :func:`normalize`).
      **options: synthetic datasets only: their arguments (e.g. ``num_classes``).

    Returns:
      A :class:`Dataset`.

    Example:
      >>> ds = load("digits", split="train")
      >>> ds.features.shape, ds.num_classes
      ((1078, 8, 8, 1), 10)
    """
    return load_source(
        name, split=split, seed=seed, data_dir=data_dir, normalize=normalize, **options
    ).materialize()


def _check(name: str, split: str, seed: int, options: dict) -> tuple[str, str, int]:
    if not isinstance(name, str | os.PathLike):
        raise ValueError(f"dataset name must be a string or a path, got {name!r}.")
    name = os.fspath(name)
    if name not in available_datasets() and not os.path.exists(name):
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(available_datasets())}, or the path "
            "of your own data (a .npz file, an ImageFolder tree, a directory of ArrayRecord files "
            "with its schema.json)."
        )
    if options and name not in SYNTHETIC_DATASETS:
        raise ValueError(f"{name} takes no options, got {', '.join(sorted(options))}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    return name, split, check_integer("seed", seed, lower=0)


def load_source(
    name: str,
    *,
    split: str,
    seed: int = 0,
    data_dir: str | None = None,
    normalize: bool = True,
    **options,
) -> Source:
    """The split :func:`load` returns, as a random-access :class:`Source` for the input pipeline;
    ``name`` may also be a path to the user's own data (:func:`open_path`).

    Embedded datasets are loaded into memory as by :func:`load` (:class:`InMemorySource`, float32
    features, identity ``normalization``). tfds datasets are read on demand from their ArrayRecord
    files, images as uint8; the source's ``normalization`` (a jittable
    :class:`Normalization`) scales and standardizes them on device exactly as :func:`load` does on
    the host. Splits, seeds and arguments mean what they mean for :func:`load`.

    Returns:
      A :class:`Source` whose examples and labels are, in order, those of :func:`load`'s
      :class:`Dataset` (its features after ``source.normalization``).

    Example:
      >>> source = load_source("digits", split="test")
      >>> len(source), source.feature_shape, source.feature_dtype
      (360, (8, 8, 1), dtype('float32'))
    """
    name, split, seed = _check(name, split, seed, options)
    if name not in available_datasets():
        return open_path(name, seed=seed)[split]
    if name in SYNTHETIC_DATASETS:
        return InMemorySource(teacher_dataset(split, seed=seed, **options))
    if name in EMBEDDED_DATASETS:
        return InMemorySource(load_embedded(name, split=split, seed=seed))
    return tfds_source(name, split=split, seed=seed, data_dir=data_dir, normalize=normalize)


def load_splits(
    name: str,
    *,
    seed: int = 0,
    data_dir: str | None = None,
    normalize: bool = True,
    **options,
) -> dict[str, Source]:
    """The train, validation and test sources of a registered dataset (:func:`load_source`) or of
    the user's own data at a path (:func:`open_path`, opened and checked once).

    Args:
      name: one of :func:`available_datasets`, or a path (a ``.npz`` file, an ImageFolder tree, a
        directory of ArrayRecord files with its ``schema.json``).
      seed, data_dir, normalize, options: as for :func:`load_source` (paths take ``seed`` only).

    Returns:
      ``{"train": Source, "validation": Source, "test": Source}``.

    Example:
      >>> {split: len(source) for split, source in load_splits("iris").items()}
      {'train': 90, 'validation': 30, 'test': 30}
    """
    name, _, seed = _check(name, "train", seed, options)
    if name not in available_datasets():
        return open_path(name, seed=seed)
    return {
        split: load_source(
            name, split=split, seed=seed, data_dir=data_dir, normalize=normalize, **options
        )
        for split in SPLITS
    }


def provenance(
    data_config: Mapping, splits: Mapping[str, Source], *, given: bool = False
) -> dict[str, dict]:
    """What a run's ``config.json`` records about its data, beyond the ``data`` config itself.

    A registered dataset is named by the config (nothing to add). The user's own data, by path or
    given from Python, adds ``data_fingerprint`` (:func:`fingerprint`: split sizes and a hash of
    the labels), so that a resumed run refuses data that changed; sources given from Python
    replace the config's ``data.name`` (which did not say what was trained on) by None and
    list the sources under ``data.sources``.

    Args:
      data_config: the ``data`` part of the run's config (a ``ConfigDict`` or a dict).
      splits: the train, validation and test sources the run uses.
      given: whether ``splits`` were given from Python rather than loaded from ``data.name``.

    Returns:
      Top-level entries to merge into ``config.json``.

    Example:
      >>> provenance({"name": "digits"}, load_splits("digits"))
      {}
    """
    name = data_config["name"]
    if not given and name in available_datasets():
        return {}
    record = {"data_fingerprint": fingerprint(splits)}
    if given:
        to_json = getattr(data_config, "to_json_best_effort", None)
        data_json = json.loads(to_json()) if to_json else dict(data_config)
        record["data"] = {
            **data_json,
            "name": None,
            "sources": {split: repr(source) for split, source in splits.items()},
        }
    return record
