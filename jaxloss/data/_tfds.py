"""Image datasets read through ``tfds.data_source`` (random access, no TensorFlow needed)."""

from __future__ import annotations

import numpy as np

from jaxloss.data._constants import IMAGE_STATS
from jaxloss.data._sources import Normalization, Source, TfdsSource, view

__all__ = ["TFDS_DATASETS", "tfds_source"]

TFDS_DATASETS = tuple(IMAGE_STATS)
# Share of the official train split held out as the validation split (45k/5k on CIFAR, as in the
# smooth top-k and noised top-k protocols).
_VALIDATION_FRACTION = 0.1


def _not_prepared_message(name: str, data_dir: str | None) -> str:
    dir_flag = f" --data_dir={data_dir}" if data_dir else ""
    return (
        f"tfds dataset {name!r} is not prepared in the ArrayRecord format"
        f"{' under ' + data_dir if data_dir else ' in the default tfds data_dir'}. "
        "Prepare it once on a machine with network access, in this project's environment:\n"
        f"    pip install 'jaxloss[prepare]' && tfds build {name} --file_format=array_record"
        f"{dir_flag}\n"
        "and copy the data directory here if this machine is offline."
    )


def _open(name: str, tfds_split: str, data_dir: str | None):
    """The random-access ``tfds.data_source`` of one official split and the builder's info."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            f"loading {name!r} needs tensorflow-datasets: pip install 'jaxloss[data]'."
        ) from err
    try:
        source = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False)
        info = tfds.builder(name, data_dir=data_dir).info
    except Exception:  # tfds reports a missing dataset in many ways, none of them clear
        # The causes tfds chains (tens of lines) say the same less clearly.
        raise FileNotFoundError(_not_prepared_message(name, data_dir)) from None
    return source, info


def _split_indices(num_examples: int, split: str, seed: int) -> np.ndarray:
    """Sorted indices of "train" or "validation" (a seeded 10 %) in the official train split."""
    perm = np.random.default_rng(seed).permutation(num_examples)
    n_val = int(round(_VALIDATION_FRACTION * num_examples))
    return np.sort(perm[:n_val] if split == "validation" else perm[n_val:])


def tfds_source(
    name: str, *, split: str, seed: int, data_dir: str | None, normalize: bool
) -> Source:
    """One split as a uint8 :class:`Source` read on demand: "test" is the official test split,
    "validation" a seeded 10 % of the official train split and "train" the rest; the
    ``normalization`` scales to [0, 1] and, when ``normalize``, standardizes with the dataset's
    per-channel constants."""
    source, info = _open(name, "test" if split == "test" else "train", data_dir)
    mean, std = IMAGE_STATS[name] if normalize else (None, None)
    metadata = {"seed": seed}
    if normalize:
        metadata.update(normalize_mean=mean, normalize_std=std)
    official = TfdsSource(
        source,
        info,
        name=f"{name}/{split}",
        normalization=Normalization(255.0, mean, std),
        metadata=metadata,
    )
    if split == "test":
        return official
    return view(official, indices=_split_indices(len(official), split, seed))
