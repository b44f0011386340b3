r"""Compares every loss on the embedded data sets: a results table and plots, offline, on a CPU.

    python experiments/compare.py --workdir results [--config experiments/configs/compare.py]

Writes ``results.md``, ``results.csv`` and ``*.png`` into the workdir (one sub-folder of logs per
run) and prints the table. The logic lives in :mod:`jaxloss.training.comparison`.
"""

import importlib
import os

from absl import app, flags, logging
from ml_collections import config_flags

from jaxloss.training import comparison

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "compare.py"),
    "The comparison grid.",
)
_WORKDIR = flags.DEFINE_string("workdir", "results", "Where tables, plots and run logs go.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # One line per run instead of the training loop's per-epoch log lines.
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    configs = {
        setup: {
            loss: comparison.run_config(
                importlib.import_module(f"configs.{setup}"),
                loss,
                num_seeds=config.num_seeds,
                top_k=config.top_k,
            )
            for loss in config.losses
        }
        for setup in config.setups
    }
    results = comparison.run_grid(configs, _WORKDIR.value)
    table = comparison.write_report(
        results,
        _WORKDIR.value,
        calibration_setup=config.calibration_setup,
        calibration_losses=list(config.calibration_losses),
        long_tail_setup=config.long_tail_setup,
    )
    print(table)
    print(f"Tables and plots are in {os.path.abspath(_WORKDIR.value)}")


if __name__ == "__main__":
    app.run(main)
