r"""Compares every loss on the embedded data sets: a results table and plots, offline, on a CPU.

    python experiments/compare.py --workdir results [--config experiments/configs/compare.py]

Writes ``results.md``, ``results.csv`` and ``*.png`` into the workdir (one sub-folder of logs per
run) and prints the table. The logic lives in :mod:`jaxloss.training.comparison`.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from jaxloss.training import comparison

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "compare.py"),
    "The comparison grid.",
)
_WORKDIR = flags.DEFINE_string("workdir", "results", "Where tables, plots and run logs go.")


def main(argv):
    del argv
    config = _CONFIG.value
    grid = config.grid.to_dict()
    chosen = [name.strip() for name in config.losses.split(",") if name.strip()] or list(grid)
    unknown = sorted(set(chosen) - set(grid))
    if unknown:
        raise app.UsageError(f"unknown losses {unknown}; the grid has {sorted(grid)}")
    setups = dict(config.setups.items())
    results = comparison.run_grid(
        setups, {name: grid[name] for name in chosen}, _WORKDIR.value, num_seeds=config.num_seeds
    )
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
