r"""Compares every loss on the embedded data sets with an equal tuning budget, offline, on a CPU.

    python experiments/compare.py --workdir results [--config experiments/configs/compare.py]
    python experiments/compare.py --workdir results --readme README.md   # also the README and docs

Writes ``results.md`` ("which loss when" per setup first, from the verdicts), ``results.csv``,
``results.json`` (every test value and tuning trial; two runs on one machine write the same
file) and ``*.png`` into the workdir (one sub-folder of logs per run) and prints the verdicts.
The protocol is in ``comparison.py``, the report in ``report.py``.
"""

import importlib
import os
import shutil
import subprocess
import time

import cli
import comparison
import jax
import ml_collections
import report
from absl import app, flags, logging

_CONFIG = cli.define_config_file(
    "config",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "compare.py"),
    "The comparison grid.",
)
_WORKDIR = flags.DEFINE_string("workdir", "results", "Where tables, plots and run logs go.")
_README = flags.DEFINE_string(
    "readme",
    None,
    "If set (README.md), replace its comparison headline and the table of the comparison page "
    "beside it (docs/guide/comparison.md) with this run's, name the commit it ran from, and copy "
    "the plots that page shows into docs/, so that no figure in them is copied by hand.",
)

# The plots the comparison page shows (copied into docs/ by --readme).
README_PLOTS = ("bars_ranking.png", "sensitivity.png", "reliability.png", "per_class_recall.png")


def check(config: ml_collections.ConfigDict) -> None:
    """Raises a ConfigError naming the comparison config's field that cannot run."""
    comparison.check_protocol(
        setups=list(config.setups),
        available=[name for name in cli.available_configs() if name != "compare"],
        losses=list(config.losses),
        tuning=config.tuning,
        num_seeds=config.num_seeds,
        top_k=config.top_k,
        floor_setup=config.floor_setup,
        floor=config.floor,
    )


def run(config: ml_collections.ConfigDict, workdir: str, *, verbose: bool = True) -> list:
    """Every (setup, loss) cell of ``config``, in the order setups x losses."""
    check(config)
    modules = {setup: importlib.import_module(f"configs.{setup}") for setup in config.setups}
    found = {}
    for loss in config.losses:
        cells = comparison.run_loss(
            modules,
            loss,
            num_seeds=config.num_seeds,
            top_k=config.top_k,
            tuning=config.tuning,
            workdir=workdir,
            overrides=config.overrides.to_dict(),
        )
        for cell in cells:
            found[cell.setup, loss] = cell
            if not (verbose and cli.is_reporting_process()):
                continue
            selected = "" if cell.tuning is None else f", selected {cell.tuning.selected}"
            metric = cell.selection_metric
            print(
                f"[{cell.setup}] {loss}: test {metric} {cell.metrics[metric].mean():.4f}, "
                f"ece {cell.metrics['ece'].mean():.4f}{selected} ({cell.seconds:.1f} s)",
                flush=True,
            )
    return [found[setup, loss] for setup in config.setups for loss in config.losses]


def write_report(
    config: ml_collections.ConfigDict, cells: list, workdir: str, *, header: str
) -> str:
    """results.md, .csv, .json and the plots, as ``config`` asks; returns the Markdown."""
    return report.write_report(
        cells,
        workdir,
        calibration_setup=config.calibration_setup,
        calibration_losses=list(config.calibration_losses),
        long_tail_setup=config.long_tail_setup,
        floor_setup=config.floor_setup,
        floor=config.floor,
        header=header,
    )


def _commit() -> str:
    """The commit this code ran from, and whether the code it imports had uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "experiments", "jaxloss")
    return commit + (" (with uncommitted changes)" if dirty else "")


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
    start, cpu = time.perf_counter(), os.times()
    cells = run(config, _WORKDIR.value)
    if not cli.is_reporting_process():
        return
    minutes = (time.perf_counter() - start) / 60
    now = os.times()
    cpu_minutes = (now.user - cpu.user + now.system - cpu.system) / 60
    commit = _commit()
    header = (
        f"# Loss comparison\n\nProtocol: {report.protocol_text(config)}. {len(cells)} cells in "
        f"{minutes:.1f} min ({cpu_minutes:.1f} CPU min), commit {commit}.\n"
    )
    write_report(config, cells, _WORKDIR.value, header=header)
    if _README.value:
        report.update_readme(cells, _README.value, commit=commit, minutes=minutes)
        docs = os.path.join(os.path.dirname(os.path.abspath(_README.value)), "docs")
        for name in README_PLOTS:
            shutil.copy(os.path.join(_WORKDIR.value, name), os.path.join(docs, name))
    print(header)
    print(report.verdict_table(cells))
    print(f"Tables, the tuning record and plots are in {os.path.abspath(_WORKDIR.value)}")


if __name__ == "__main__":
    cli.run(main)
