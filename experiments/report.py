"""The comparison's report: a ranking per setup, full tables, the tuning record, CSV, JSON, plots."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

import matplotlib
import numpy as np
from comparison import Cell

from jaxloss import metrics
from jaxloss.training.summary import sample_std
from jaxloss.training.train import higher_is_better, unstack_bins

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASELINE = "cross_entropy"


def _cell_text(values: np.ndarray) -> str:
    return f"{values.mean():.4f} ± {sample_std(values):.4f}"


def _best(scores: np.ndarray, higher: bool) -> float:
    """The best of ``scores`` ignoring NaN (diverged trials); NaN if every one diverged."""
    finite = scores[~np.isnan(scores)]
    if not finite.size:
        return float("nan")
    return float(finite.max() if higher else finite.min())


def _setups(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.setup for c in cells))


def headline_metric(cells: Sequence[Cell]) -> str:
    """The metric a setup is ranked by: its validation selection metric."""
    return cells[0].selection_metric


def ranking(cells: Sequence[Cell]) -> str:
    """Per setup: the best loss on its headline metric (and on ECE), its margin over
    cross-entropy, and whether that margin exceeds the seed-to-seed spread."""
    lines = ["## Ranking", ""]
    lines.append(
        "| setup | metric | best loss | best | cross-entropy | margin | beyond seed spread? |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for setup in _setups(cells):
        rows = [c for c in cells if c.setup == setup]
        for metric in (headline_metric(rows), "ece"):
            sign = 1.0 if higher_is_better(metric) else -1.0
            best = max(rows, key=lambda c: sign * c.metrics[metric].mean())
            base = next((c for c in rows if c.loss == BASELINE), None)
            if base is None:
                lines.append(
                    f"| {setup} | {metric} | {best.loss} | {_cell_text(best.metrics[metric])} "
                    "| – | – | – |"
                )
                continue
            margin = sign * (best.metrics[metric].mean() - base.metrics[metric].mean())
            # The spread of a difference of two independent means over seeds.
            spread = np.hypot(sample_std(best.metrics[metric]), sample_std(base.metrics[metric]))
            verdict = "–" if best is base else ("yes" if margin > spread else "no")
            lines.append(
                f"| {setup} | {metric} | {best.loss} | {_cell_text(best.metrics[metric])} | "
                f"{_cell_text(base.metrics[metric])} | {margin:+.4f} | {verdict} (spread "
                f"{spread:.4f}) |"
            )
    lines.append("")
    return "\n".join(lines)


def markdown_table(cells: Sequence[Cell]) -> str:
    """One table per setup: mean ± std over seeds, the best mean of each column in bold."""
    lines = []
    for setup in _setups(cells):
        rows = [c for c in cells if c.setup == setup]
        names = list(rows[0].metrics)
        best = {}
        for m in names:
            means = np.array([c.metrics[m].mean() for c in rows])
            best[m] = means.max() if higher_is_better(m) else means.min()
        seeds = rows[0].metrics[names[0]].size
        lines += [f"### {setup} (test split, mean ± std over {seeds} seeds)", ""]
        lines.append("| loss | " + " | ".join(names) + " | seconds |")
        lines.append("|---" * (len(names) + 2) + "|")
        for c in rows:
            texts = []
            for m in names:
                text = _cell_text(c.metrics[m])
                texts.append(f"**{text}**" if np.isclose(c.metrics[m].mean(), best[m]) else text)
            lines.append(f"| {c.loss} | " + " | ".join(texts) + f" | {c.seconds:.1f} |")
        lines.append("")
    return "\n".join(lines)


def tuning_table(cells: Sequence[Cell]) -> str:
    """The grid, the selected values and the validation score of every trial, per cell."""
    tuned = [c for c in cells if c.tuning is not None]
    if not tuned:
        return "## Tuning\n\nNone: every loss ran with its papers' defaults.\n"
    lines = ["## Tuning (validation split; the selected trial in bold)", ""]
    for setup in _setups(tuned):
        lines += [f"### {setup}", ""]
        for c in (c for c in tuned if c.setup == setup):
            t = c.tuning
            names = list(t.grid)
            scores = np.asarray(t.scores)
            best = (
                -1
                if np.all(np.isnan(scores))
                else int(np.nanargmax(scores if higher_is_better(t.metric) else -scores))
            )
            trials = []
            for i, score in enumerate(t.scores):
                values = ", ".join(f"{n}={t.grid[n][i]:.3g}" for n in names)
                text = f"{values}: {score:.4f}"
                trials.append(f"**{text}**" if i == best else text)
            lines.append(
                f"- **{c.loss}** ({t.metric}, {len(t.scores)} trials): " + "; ".join(trials)
            )
        lines.append("")
    return "\n".join(lines)


README_START = "<!-- comparison table: written by experiments/compare.py --readme -->"
README_END = "<!-- end of comparison table -->"


def summary_table(cells: Sequence[Cell]) -> str:
    """One row per loss: each setup's ranking metric and ECE (mean ± std over seeds), the best of
    each column in bold: the README's table."""
    setups = _setups(cells)
    losses = list(dict.fromkeys(c.loss for c in cells))
    columns = [
        (s, m) for s in setups for m in (headline_metric([c for c in cells if c.setup == s]), "ece")
    ]
    found = {(c.setup, c.loss): c for c in cells}
    best = {}
    for setup, metric in columns:
        means = [
            found[setup, loss].metrics[metric].mean() for loss in losses if (setup, loss) in found
        ]
        best[setup, metric] = max(means) if higher_is_better(metric) else min(means)
    lines = ["| loss | " + " | ".join(f"{s} {m.replace('_', ' ')}" for s, m in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for loss in losses:
        texts = []
        for setup, metric in columns:
            cell = found.get((setup, loss))
            if cell is None:
                texts.append("–")
                continue
            text = _cell_text(cell.metrics[metric])
            wins = np.isclose(cell.metrics[metric].mean(), best[setup, metric])
            texts.append(f"**{text}**" if wins else text)
        lines.append(f"| {loss} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def update_readme(cells: Sequence[Cell], path: str) -> None:
    """Replaces the README's comparison table (between its markers) with this run's."""
    with open(path) as f:
        text = f.read()
    start, end = text.index(README_START), text.index(README_END)
    table = summary_table(cells)
    with open(path, "w") as f:
        f.write(text[: start + len(README_START)] + "\n" + table + "\n" + text[end:])


def write_csv(cells: Sequence[Cell], path: str) -> None:
    """One row per (setup, loss, metric) with mean, std and the per-seed values."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setup", "loss", "metric", "mean", "std", "values"])
        for c in cells:
            for m, v in c.metrics.items():
                values = " ".join(f"{x:.6f}" for x in v)
                writer.writerow(
                    [c.setup, c.loss, m, f"{v.mean():.6f}", f"{sample_std(v):.6f}", values]
                )


def write_json(cells: Sequence[Cell], path: str) -> None:
    """Every cell's per-seed test metrics and its tuning record."""
    records = [
        {
            "setup": c.setup,
            "loss": c.loss,
            "test": {m: v.tolist() for m, v in c.metrics.items()},
            "tuning": None
            if c.tuning is None
            else {
                "metric": c.tuning.metric,
                "grid": c.tuning.grid,
                "validation_scores": c.tuning.scores,
                "selected": c.tuning.selected,
            },
            "seconds": c.seconds,
        }
        for c in cells
    ]
    with open(path, "w") as f:
        json.dump(records, f, indent=1)


def _color(index: int):
    """Distinct colours for up to 20 losses (the default cycle repeats after 10)."""
    return matplotlib.colormaps["tab20"](index % 20)


def plot_metric_bars(cells: Sequence[Cell], metric: str, path: str) -> None:
    """Grouped bars: one group per setup, one bar per loss, error bars = std over seeds.

    Accuracies are shown from just below the lowest mean, so that differences are visible; NLL on
    a log axis (a collapsed loss can be orders of magnitude worse). The legend sits outside.
    """
    setups = _setups(cells)
    losses = list(dict.fromkeys(c.loss for c in cells))
    width = 0.8 / len(losses)
    fig, ax = plt.subplots(figsize=(max(9, 1.1 * len(setups) * len(losses) / 3), 4.5))
    for i, loss in enumerate(losses):
        found = [next((c for c in cells if c.setup == s and c.loss == loss), None) for s in setups]
        means = [c.metrics[metric].mean() if c else np.nan for c in found]
        stds = [sample_std(c.metrics[metric]) if c else 0.0 for c in found]
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
    direction = "higher" if higher_is_better(metric) else "lower"
    ax.set_title(f"{metric} ({direction} is better; mean ± std over seeds)")
    means = np.array([c.metrics[metric].mean() for c in cells])
    if metric == "nll":
        ax.set_yscale("log")
    elif higher_is_better(metric):
        low = np.nanmin(means)
        ax.set_ylim(max(0.0, low - 0.1 * (1.0 - low) - 0.02), min(1.0, np.nanmax(means) + 0.02))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(cells: Sequence[Cell], setup: str, losses: Sequence[str], path: str):
    """Reliability diagrams of ``losses`` on ``setup``: the bins of all seeds pooled, and in the
    legend the table's ECE (the mean of the per-seed ECEs)."""
    found = [c for name in losses for c in cells if c.setup == setup and c.loss == name]
    if not found:
        return
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 4.2), squeeze=False)
    for ax, c in zip(axes[0], found, strict=True):
        seeds = c.test_bins.shape[0]
        bins = unstack_bins(c.test_bins.sum(axis=0))
        metrics.reliability_diagram(
            bins,
            ax=ax,
            title=f"{c.loss} ({setup})",
            ece=float(c.metrics["ece"].mean()),
            ece_label=f"mean over {seeds} seeds",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class_recall(cells: Sequence[Cell], setup: str, path: str) -> None:
    """Test recall per class (head to tail, mean over seeds) of every loss on ``setup``."""
    found = [c for c in cells if c.setup == setup]
    if not found:
        return
    fig, ax = plt.subplots(figsize=(9, 4.5))
    order = np.argsort(-found[0].train_class_counts, kind="stable")
    for i, c in enumerate(found):
        recall = np.nanmean(c.per_class_recall, axis=0)[order]
        ax.plot(recall, marker="o", ms=3, label=c.loss, color=_color(i))
    counts = found[0].train_class_counts
    ax.set_xticks(range(len(order)), [f"{k}\n({counts[k]})" for k in order])
    ax.set_xlabel("class (training examples), head to tail")
    ax.set_ylabel("test recall")
    ax.set_title(f"Per-class recall on {setup}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sensitivity(cells: Sequence[Cell], path: str) -> None:
    """Validation metric against the learning rate per loss (the best over the loss's other
    tuned hyperparameter at each rate), one panel per setup."""
    tuned = [c for c in cells if c.tuning is not None]
    if not tuned:
        return
    setups = _setups(tuned)
    fig, axes = plt.subplots(1, len(setups), figsize=(5 * len(setups) + 2, 4), squeeze=False)
    losses = list(dict.fromkeys(c.loss for c in tuned))
    for ax, setup in zip(axes[0], setups, strict=True):
        for c in (c for c in tuned if c.setup == setup):
            rates = np.asarray(c.tuning.grid["learning_rate"])
            scores = np.asarray(c.tuning.scores)
            unique = np.unique(rates)
            best = [_best(scores[rates == r], higher_is_better(c.tuning.metric)) for r in unique]
            ax.plot(
                unique, best, marker="o", ms=3, label=c.loss, color=_color(losses.index(c.loss))
            )
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"validation {tuned[0].tuning.metric}")
        ax.set_title(setup)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    cells: Sequence[Cell],
    workdir: str,
    *,
    calibration_setup: str,
    calibration_losses: Sequence[str],
    long_tail_setup: str,
    header: str = "",
) -> str:
    """Writes results.md (ranking first), results.csv, results.json and the plots; returns the
    Markdown."""
    os.makedirs(workdir, exist_ok=True)
    text = "\n".join([header, ranking(cells), markdown_table(cells), tuning_table(cells)])
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    write_csv(cells, os.path.join(workdir, "results.csv"))
    write_json(cells, os.path.join(workdir, "results.json"))
    for metric in cells[0].metrics:
        plot_metric_bars(cells, metric, os.path.join(workdir, f"bars_{metric}.png"))
    plot_reliability(
        cells, calibration_setup, calibration_losses, os.path.join(workdir, "reliability.png")
    )
    plot_per_class_recall(cells, long_tail_setup, os.path.join(workdir, "per_class_recall.png"))
    plot_sensitivity(cells, os.path.join(workdir, "sensitivity.png"))
    return text
