r"""Compares every loss on the embedded data sets with an equal tuning budget, offline, on a CPU.

    python experiments/compare.py --workdir results [--config experiments/configs/compare.py]

Writes ``results.md`` (a ranking per setup first), ``results.csv``, ``results.json`` (with every
tuning trial) and ``*.png`` into the workdir (one sub-folder of logs per run) and prints the
ranking. The protocol is in ``comparison.py``, the report in ``report.py``.
"""

import importlib
import os
import shutil
import time

import cli
import comparison
import jax
import report
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "compare.py"),
    "The comparison grid.",
)
_WORKDIR = flags.DEFINE_string("workdir", "results", "Where tables, plots and run logs go.")
_README = flags.DEFINE_string(
    "readme",
    None,
    "If set (README.md), replace its comparison table with this run's and copy the plots it shows "
    "into docs/, so that no figure in it is copied by hand.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # One line per cell instead of the training loop's per-epoch log lines.
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    # The setups share models and shapes, so most cells compile programs another cell already
    # compiled: a persistent cache turns those compiles into disk reads.
    jax.config.update("jax_compilation_cache_dir", os.path.join(_WORKDIR.value, ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    start = time.perf_counter()
    cells = []
    for setup in config.setups:
        module = importlib.import_module(f"configs.{setup}")
        for loss in config.losses:
            cell = comparison.run_cell(
                setup,
                module,
                loss,
                num_seeds=config.num_seeds,
                top_k=config.top_k,
                tuning=config.tuning,
                workdir=os.path.join(_WORKDIR.value, setup, loss),
            )
            cells.append(cell)
            if not cli.is_reporting_process():
                continue
            selected = "" if cell.tuning is None else f", selected {cell.tuning.selected}"
            metric = report.headline_metric([cell])
            print(
                f"[{setup}] {loss}: test {metric} {cell.metrics[metric].mean():.4f}, "
                f"ece {cell.metrics['ece'].mean():.4f}{selected} ({cell.seconds:.1f} s)",
                flush=True,
            )
    if not cli.is_reporting_process():
        return
    minutes = (time.perf_counter() - start) / 60
    trials = config.tuning.trials
    protocol = (
        f"{trials} tuning trials per loss and setup (validation, seed {config.tuning.seed}), then "
        f"{config.num_seeds} seeds"
        if trials
        else f"the papers' default hyperparameters, {config.num_seeds} seeds, no tuning"
    )
    header = (
        f"# Loss comparison\n\nProtocol: {protocol}. {len(cells)} cells in {minutes:.1f} min.\n"
    )
    report.write_report(
        cells,
        _WORKDIR.value,
        calibration_setup=config.calibration_setup,
        calibration_losses=list(config.calibration_losses),
        long_tail_setup=config.long_tail_setup,
        header=header,
    )
    if _README.value:
        report.update_readme(cells, _README.value)
        docs = os.path.join(os.path.dirname(os.path.abspath(_README.value)), "docs")
        for name in (
            "bars_accuracy.png",
            "reliability.png",
            "per_class_recall.png",
            "sensitivity.png",
        ):
            shutil.copy(os.path.join(_WORKDIR.value, name), os.path.join(docs, name))
    print(header)
    print(report.ranking(cells))
    print(f"Tables, the tuning record and plots are in {os.path.abspath(_WORKDIR.value)}")


if __name__ == "__main__":
    cli.run(main)
