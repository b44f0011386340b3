"""Converts the user's own data (a ``.npz`` file or an ImageFolder tree) to a directory of
ArrayRecord files with its ``schema.json``, the fastest of the formats ``config.data.name`` reads.

    python -m jaxloss.data.convert SRC DST [--chunk_size 1024]

Streams: the examples go through in chunks of ``chunk_size`` (an ImageFolder tree is decoded one
chunk at a time, never held whole). Every file of SRC is checked before DST is written; the splits
are stored as they are (a missing validation split is carved at training time, from the run's
``split_seed``, exactly as for SRC itself).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from jaxloss._validation import check_integer
from jaxloss.data._own import open_raw
from jaxloss.data._sources import SCHEMA_FILE, _write_records

__all__ = ["convert", "main"]


def convert(source: str, destination: str, *, chunk_size: int = 1024) -> dict[str, int]:
    """Writes the splits of ``source`` as ``<destination>/<split>.array_record`` plus
    ``schema.json``.

    Args:
      source: a ``.npz`` file or an ImageFolder tree (see :func:`jaxloss.data.open_path`).
      destination: a directory that does not exist yet or is empty.
      chunk_size: examples read and written at once.

    Returns:
      The number of examples of each split written.

    Raises:
      ValueError: a bad file in ``source`` (named), ``source`` already an ArrayRecord directory,
        or a ``destination`` that holds files.

    Example:
      >>> import tempfile
      >>> root = tempfile.mkdtemp()
      >>> x, y = np.zeros((6, 2, 2), np.uint8), np.array([0, 1, 0, 1, 0, 1])
      >>> np.savez(f"{root}/toy.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
      >>> convert(f"{root}/toy.npz", f"{root}/toy")
      {'train': 6, 'test': 2}
    """
    chunk_size = check_integer("chunk_size", chunk_size, lower=1)
    if os.path.isfile(os.path.join(source, SCHEMA_FILE)):
        raise ValueError(f"{source} already is a directory of ArrayRecord files.")
    if os.path.exists(destination) and (not os.path.isdir(destination) or os.listdir(destination)):
        raise ValueError(f"{destination} exists and is not an empty directory; choose a new one.")
    splits = open_raw(source)  # checks every file first
    os.makedirs(destination, exist_ok=True)
    written = {}
    for split, data in splits.items():
        chunks = (
            data.read(np.arange(start, min(start + chunk_size, len(data))))
            for start in range(0, len(data), chunk_size)
        )
        written[split] = _write_records(
            os.path.join(destination, f"{split}.array_record"),
            ((chunk["features"], chunk["labels"]) for chunk in chunks),
            feature_shape=data.feature_shape,
            feature_dtype=data.feature_dtype,
            num_classes=data.num_classes,
            class_names=data.class_names,
        )
    return written


def main(argv: list[str] | None = None) -> int:
    """The command line, ``python -m jaxloss.data.convert SOURCE DESTINATION [--chunk_size=N]``;
    a mistake prints one line and returns 1.

    Example:
      >>> import tempfile
      >>> root = tempfile.mkdtemp()
      >>> x, y = np.zeros((6, 2, 2), np.uint8), np.array([0, 1, 0, 1, 0, 1])
      >>> np.savez(f"{root}/toy.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
      >>> main([f"{root}/toy.npz", f"{root}/toy", "--chunk_size=4"])  # doctest: +ELLIPSIS
      wrote .../toy (train 6, test 2 examples)
      0
    """
    parser = argparse.ArgumentParser(
        prog="python -m jaxloss.data.convert",
        description="Converts a .npz file or an ImageFolder tree to ArrayRecord files + schema.",
    )
    parser.add_argument("source", help="a .npz file or an ImageFolder tree")
    parser.add_argument("destination", help="a new (or empty) directory")
    parser.add_argument("--chunk_size", type=int, default=1024, help="examples per chunk")
    args = parser.parse_args(argv)
    try:
        written = convert(args.source, args.destination, chunk_size=args.chunk_size)
    except ValueError as error:
        print(f"FATAL {error}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{split} {n}" for split, n in written.items())
    print(f"wrote {args.destination} ({sizes} examples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
