"""Train a grid of losses x setups x seeds and report them side by side (tables and plots).

``experiments/compare.py`` is the command line; this module holds the logic so that notebooks and
tests can call it too.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxloss.training.loop import train_and_evaluate

# Metrics reported in the table, and whether larger is better. ``topk`` names are filled in from
# the config's ``top_k``.
_HIGHER_IS_BETTER = {
    "accuracy": True,
    "top{k}_accuracy": True,
    "balanced_accuracy": True,
    "macro_top{k}_accuracy": True,
    "ece": False,
    "nll": False,
}


@dataclasses.dataclass
class RunResult:
    """One (setup, loss) cell: per-seed test metrics of the validation-selected epoch."""

    setup: str
    loss: str
    metrics: dict[str, np.ndarray]  # name -> (num_seeds,)
    per_class_recall: np.ndarray  # (num_seeds, C)
    test_probs: np.ndarray  # (num_seeds, N, C)
    test_labels: np.ndarray  # (N,)
    train_class_counts: np.ndarray  # (C,)
    seconds: float


def metric_names(top_k: int) -> list[str]:
    return [name.format(k=top_k) for name in _HIGHER_IS_BETTER]


def _higher_is_better(metric: str) -> bool:
    return metric not in ("ece", "nll")


def run_config(
    setup_module: Any, loss: str, *, num_seeds: int, top_k: int
) -> ml_collections.ConfigDict:
    """The config of one cell: the setup's own config for ``loss``, with the comparison's settings.

    ``setup_module`` is an experiment config module (``experiments/configs/<setup>.py``) whose
    ``get_config(loss)`` sets the loss and its default hyperparameters. The comparison fixes the
    number of seeds and the top-k cut-off of the metrics and of the top-k losses, turns off the
    progress bar and checkpoints (a comparison is re-run, not resumed), and changes nothing else.
    """
    config = setup_module.get_config(loss)
    config.num_seeds = num_seeds
    config.top_k = top_k
    if "k" in config.loss.hyperparameters:
        config.loss.hyperparameters.k = top_k
    config.progress_bar = False
    config.checkpoint_every_epochs = 0
    return config


def run_grid(
    configs: Mapping[str, Mapping[str, ml_collections.ConfigDict]],
    workdir: str,
    *,
    log=print,
) -> list[RunResult]:
    """Runs ``configs[setup][loss]`` for every cell; each run trains all its seeds in one step."""
    results = []
    for setup_name, by_loss in configs.items():
        for loss_name, config in by_loss.items():
            start = time.perf_counter()
            out = train_and_evaluate(config, os.path.join(workdir, setup_name, loss_name))
            seconds = time.perf_counter() - start
            best = out["best"]
            k = min(config.top_k, len(out["class_names"]))
            metrics = {m: np.asarray(best[f"test/{m}"]) for m in metric_names(k)}
            results.append(
                RunResult(
                    setup=setup_name,
                    loss=loss_name,
                    metrics=metrics,
                    per_class_recall=np.asarray(best["test/per_class_recall"]),
                    test_probs=np.asarray(best["test_probs"]),
                    test_labels=np.asarray(out["test_labels"]),
                    train_class_counts=np.asarray(out["train_class_counts"]),
                    seconds=seconds,
                )
            )
            summary = ", ".join(f"{m} {v.mean():.4f}" for m, v in metrics.items())
            log(f"[{setup_name}] {loss_name}: {summary} ({seconds:.1f} s)")
    return results


def _cell(values: np.ndarray) -> str:
    return f"{values.mean():.4f} ± {values.std(ddof=1) if values.size > 1 else 0.0:.4f}"


def markdown_table(results: Sequence[RunResult]) -> str:
    """One table per setup: mean ± std over seeds, the best mean of each column in bold."""
    lines = []
    for setup in dict.fromkeys(r.setup for r in results):
        rows = [r for r in results if r.setup == setup]
        metrics = list(rows[0].metrics)
        best = {}
        for m in metrics:
            means = np.array([r.metrics[m].mean() for r in rows])
            best[m] = means.max() if _higher_is_better(m) else means.min()
        seeds = rows[0].metrics[metrics[0]].size
        lines += [f"### {setup} (test split, mean ± std over {seeds} seeds)", ""]
        lines.append("| loss | " + " | ".join(metrics) + " | seconds |")
        lines.append("|---" * (len(metrics) + 2) + "|")
        for r in rows:
            cells = []
            for m in metrics:
                text = _cell(r.metrics[m])
                cells.append(f"**{text}**" if np.isclose(r.metrics[m].mean(), best[m]) else text)
            lines.append(f"| {r.loss} | " + " | ".join(cells) + f" | {r.seconds:.1f} |")
        lines.append("")
    return "\n".join(lines)


def write_csv(results: Sequence[RunResult], path: str) -> None:
    """One row per (setup, loss, metric) with mean, std and the per-seed values."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setup", "loss", "metric", "mean", "std", "values"])
        for r in results:
            for m, v in r.metrics.items():
                std = v.std(ddof=1) if v.size > 1 else 0.0
                values = " ".join(f"{x:.6f}" for x in v)
                writer.writerow([r.setup, r.loss, m, f"{v.mean():.6f}", f"{std:.6f}", values])


def _color(index: int):
    """Distinct colours for up to 20 losses (the default cycle repeats after 10)."""
    import matplotlib

    return matplotlib.colormaps["tab20"](index % 20)


def plot_metric_bars(results: Sequence[RunResult], metric: str, path: str) -> None:
    """Grouped bars: one group per setup, one bar per loss, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = list(dict.fromkeys(r.setup for r in results))
    losses = list(dict.fromkeys(r.loss for r in results))
    width = 0.8 / len(losses)
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(setups) * len(losses) / 3), 4.5))
    for i, loss in enumerate(losses):
        cells = [
            next((r for r in results if r.setup == s and r.loss == loss), None) for s in setups
        ]
        means = [c.metrics[metric].mean() if c else np.nan for c in cells]
        stds = [c.metrics[metric].std() if c else 0.0 for c in cells]
        ax.bar(
            np.arange(len(setups)) + i * width,
            means,
            width,
            yerr=stds,
            label=loss,
            capsize=2,
            color=_color(i),
        )
    ax.set_xticks(np.arange(len(setups)) + 0.4 - width / 2, setups)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{metric} ({'higher' if _higher_is_better(metric) else 'lower'} is better)")
    if _higher_is_better(metric):
        lows = [r.metrics[metric].mean() for r in results]
        ax.set_ylim(max(0.0, min(lows) - 0.05), min(1.0, max(lows) + 0.03))
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(results: Sequence[RunResult], setup: str, losses: Sequence[str], path: str):
    """Reliability diagrams of the first seed of each of ``losses`` on ``setup``, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxloss import metrics

    cells = [r for name in losses for r in results if r.setup == setup and r.loss == name]
    if not cells:
        return
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 4.2), squeeze=False)
    for ax, cell in zip(axes[0], cells, strict=True):
        metrics.reliability_diagram(
            cell.test_probs[0], cell.test_labels, ax=ax, title=f"{cell.loss} ({setup})"
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class_recall(results: Sequence[RunResult], setup: str, path: str) -> None:
    """Test recall per class (head to tail, mean over seeds) of every loss on ``setup``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [r for r in results if r.setup == setup]
    if not cells:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    order = np.argsort(-cells[0].train_class_counts, kind="stable")
    for i, cell in enumerate(cells):
        recall = np.nanmean(cell.per_class_recall, axis=0)[order]
        ax.plot(recall, marker="o", ms=3, label=cell.loss, color=_color(i))
    ax.set_xticks(range(len(order)), [f"{c}\n({cells[0].train_class_counts[c]})" for c in order])
    ax.set_xlabel("class (training examples), head to tail")
    ax.set_ylabel("test recall")
    ax.set_title(f"Per-class recall on {setup}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    results: Sequence[RunResult],
    workdir: str,
    *,
    calibration_setup: str,
    calibration_losses: Sequence[str],
    long_tail_setup: str,
) -> str:
    """Writes results.md, results.csv and the plots into ``workdir``; returns the Markdown."""
    os.makedirs(workdir, exist_ok=True)
    table = markdown_table(results)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table)
    write_csv(results, os.path.join(workdir, "results.csv"))
    for metric in results[0].metrics:
        plot_metric_bars(results, metric, os.path.join(workdir, f"bars_{metric}.png"))
    plot_reliability(
        results, calibration_setup, calibration_losses, os.path.join(workdir, "reliability.png")
    )
    plot_per_class_recall(results, long_tail_setup, os.path.join(workdir, "per_class_recall.png"))
    return table
