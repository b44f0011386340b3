"""How many batches an epoch has (the input pipeline itself is in ``_pipeline.py``)."""

from __future__ import annotations

import math

from jaxloss._validation import check_integer

__all__ = ["steps_per_epoch"]


def steps_per_epoch(num_examples: int, batch_size: int, *, train: bool) -> int:
    """Batches in one epoch: ⌊N / B⌋ for training (drop remainder), ⌈N / B⌉ for evaluation.

    Example:
      >>> steps_per_epoch(10, 4, train=True), steps_per_epoch(10, 4, train=False)
      (2, 3)
    """
    num_examples = check_integer("num_examples", num_examples, lower=0)
    batch_size = check_integer("batch_size", batch_size, lower=1)
    return num_examples // batch_size if train else math.ceil(num_examples / batch_size)
