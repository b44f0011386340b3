"""The Args entries that every loss shares (``axis``, ``where``, ``class_axis_name``), written once.

A loss's docstring names a shared entry with a marker, ``axis: (shared)``, or a variant of it,
``where: (shared: softmax)``; :func:`shared_args` puts the text in at import, so ``help()``, the
API pages and the doctests all read the full entry. Text after the marker follows the shared text:
what only that loss does with the argument.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable

__all__ = ["shared_args"]

_WHERE = (
    "optional boolean mask, broadcastable to ``logits`` (False excludes a class) or of the "
    "labels' shape (False excludes an example, whose loss is 0)."
)

# One entry per argument (and variant), as one line: the decorator wraps it to the docstring.
SHARED = {
    "axis": (
        "the class axis of ``logits``, or a tuple of axes whose flattened product is the class "
        "axis (as in optax)."
    ),
    "where": _WHERE,
    # The losses computed from a softmax over the classes.
    "where: softmax": (
        f"{_WHERE} An excluded class leaves the softmax; the label's logit enters as it is even "
        "when its class is excluded, as in optax."
    ),
    "class_axis_name": (
        "inside ``jax.shard_map``, the mesh axis that the class axis is split over (each device "
        "holding a contiguous block of every row's classes, and of any per-class vector), or None "
        "(the default) for whole rows. Under plain ``jax.jit`` leave it None: XLA splits "
        "class-sharded logits itself."
    ),
}

# An Args entry whose text starts with the marker: indentation, name, variant, and the rest of
# the entry (its continuation lines, two spaces deeper, included).
_MARKER = re.compile(r"^( +)(\w+): \(shared(?:: (\w+))?\)(.*(?:\n\1  \S.*)*)$", re.M)
# The docstrings' line length (the project's 100 columns).
_WIDTH = 100


def shared_args(fn: Callable) -> Callable:
    """Replaces the ``(shared)`` markers of ``fn``'s Args section by the shared entries.

    Raises:
      ValueError: a marker names an argument ``fn`` does not take or a variant that does not
        exist, or ``fn``'s docstring has no marker (the decorator would do nothing).
    """
    parameters = inspect.signature(fn).parameters

    def fill(match: re.Match) -> str:
        indent, name, variant, rest = match.groups()
        key = name if variant is None else f"{name}: {variant}"
        if name not in parameters or key not in SHARED:
            raise ValueError(
                f"{fn.__name__}: no shared Args entry {key!r} for its arguments; the shared ones "
                f"are {sorted(SHARED)}."
            )
        return textwrap.fill(
            " ".join([f"{name}: {SHARED[key]}", *rest.split()]),
            width=_WIDTH,
            initial_indent=indent,
            subsequent_indent=indent + "  ",
            break_long_words=False,
            break_on_hyphens=False,
        )

    doc, count = _MARKER.subn(fill, fn.__doc__ or "")
    if not count:
        raise ValueError(f"{fn.__name__}: shared_args found no `name: (shared)` entry to fill.")
    fn.__doc__ = doc
    return fn
