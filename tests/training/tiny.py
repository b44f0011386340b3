"""Tiny experiment configs that train in about a second, for the training tests."""

from __future__ import annotations

import os
import sys

from tests.testing import REPO_ROOT

EXPERIMENTS = os.path.join(REPO_ROOT, "experiments")
# The config files import each other as `configs.<name>`, as they do under experiments/main.py.
if EXPERIMENTS not in sys.path:
    sys.path.insert(0, EXPERIMENTS)

from configs import digits  # noqa: E402

# Prepended to the code run_on_devices executes, so subprocesses build the same configs.
SUBPROCESS_PRELUDE = f"""
import sys
sys.path.insert(0, {EXPERIMENTS!r})
sys.path.insert(0, {REPO_ROOT!r})
from tests.training.tiny import tiny_config
"""


def tiny_config(loss: str = "cross_entropy", **overrides):
    """The digits config shrunk to a 16-unit MLP, 3 epochs, one seed, no progress bar.

    ``overrides`` set top-level fields; use dots for nested ones via ``config.update_from_flattened_dict``
    in the caller when needed.
    """
    config = digits.get_config(loss)
    config.num_epochs = 3
    config.num_seeds = 1
    config.batch_size = 128
    config.eval_batch_size = 256
    config.progress_bar = False
    config.model.hidden_sizes = (16,)
    config.optimizer.learning_rate = 0.1
    config.update(overrides)
    return config
