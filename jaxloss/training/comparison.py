"""Train a grid of losses x setups x seeds and report them side by side (tables and plots).

``experiments/compare.py`` is the command line; this module holds the logic so that notebooks and
tests can call it too.
"""

from __future__ import annotations

import copy
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


def _merge(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            _merge(config[key], value)
        else:
            config[key] = value


def run_config(
    base: ml_collections.ConfigDict,
    loss_name: str,
    loss_spec: Mapping[str, Any],
    *,
    num_seeds: int,
) -> ml_collections.ConfigDict:
    """The config of one cell: ``base`` with the loss, its hyperparameters and overrides.

    ``loss_spec`` is ``{"hyperparameters": {...}, "overrides": {...}}``; overrides are nested like
    the config, e.g. ``{"model": {"head": "cosine"}}``.
    """
    config = copy.deepcopy(base)
    with config.unlocked():
        config.num_seeds = num_seeds
        config.loss.name = loss_name
        config.loss.hyperparameters = ml_collections.ConfigDict(
            dict(loss_spec.get("hyperparameters", {}))
        )
        _merge(config, loss_spec.get("overrides", {}))
    return config


def run_grid(
    setups: Mapping[str, ml_collections.ConfigDict],
    losses: Mapping[str, Mapping[str, Any]],
    workdir: str,
    *,
    num_seeds: int,
    log=print,
) -> list[RunResult]:
    """Trains every loss on every setup with ``num_seeds`` seeds (vmapped in one step)."""
    results = []
    for setup_name, base in setups.items():
        for loss_name, spec in losses.items():
            config = run_config(base, loss_name, spec, num_seeds=num_seeds)
            start = time.perf_counter()
            out = train_and_evaluate(config, os.path.join(workdir, setup_name, loss_name))
            seconds = time.perf_counter() - start
            best = out["best"]
            k = config.get("top_k", 5)
            metrics = {
                m: np.asarray(best[f"test/{m}"])
                for m in metric_names(min(k, len(out["class_names"])))
            }
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
        ax.bar(np.arange(len(setups)) + i * width, means, width, yerr=stds, label=loss, capsize=2)
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
    for cell in cells:
        ax.plot(np.nanmean(cell.per_class_recall, axis=0)[order], marker="o", ms=3, label=cell.loss)
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
