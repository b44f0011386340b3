"""The comparison's report: "which loss when" from paired tests, tables, every trial, plots.

Every statement about a loss is read off a paired difference to cross-entropy over the report
seeds (:func:`paired_difference`): each report seed trains every loss on the same data order and
with the same initialization, so the per-seed difference cancels what the seed alone decides.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import matplotlib
import numpy as np
from comparison import Cell
from scipy import stats

import jaxloss
from jaxloss import metrics
from jaxloss.training.evaluation import higher_is_better, unstack_bins
from jaxloss.training.summary import sample_std

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASELINE = "cross_entropy"
CONFIDENCE = 0.95

# 16 of Kelly's colours of maximum contrast, picked greedily to keep every pair (and black, the
# baseline's colour) at least 26 CIELAB units apart (tab20's first 14 come within 17), with a
# marker and a hatch per loss as a second cue.
PALETTE = (
    "#0067A5",
    "#DCD300",
    "#BE0032",
    "#008856",
    "#F38400",
    "#E68FAC",
    "#C2B280",
    "#654522",
    "#A1CAF1",
    "#875692",
    "#848482",
    "#F99379",
    "#882D17",
    "#2B3D26",
    "#8DB600",
    "#B3446C",
)
MARKERS = "osD^v<>pXP*hH8dx"
HATCHES = ("", "//", "..", "xx", "\\\\", "--", "oo", "++")


def _style(losses: Sequence[str], loss: str) -> dict:
    """The colour, marker and hatch of ``loss`` among ``losses`` (black for the baseline)."""
    i = list(losses).index(loss)
    if loss == BASELINE:
        return {"color": "black", "marker": "o", "hatch": ""}
    return {
        "color": PALETTE[i % len(PALETTE)],
        "marker": MARKERS[i % len(MARKERS)],
        "hatch": HATCHES[i % len(HATCHES)],
    }


def _cell_text(values: np.ndarray) -> str:
    return f"{values.mean():.4f} ± {sample_std(values):.4f}"


def _setups(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.setup for c in cells))


def _losses(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.loss for c in cells))


def headline_metric(cells: Sequence[Cell]) -> str:
    """The metric a setup is ranked by: its validation selection metric."""
    return cells[0].selection_metric


def protocol_text(config) -> str:
    """The comparison config's protocol in one sentence."""
    tuning = config.tuning
    if not tuning.trials:
        return f"the papers' default hyperparameters, {config.num_seeds} report seeds, no tuning"
    first = tuning.seed
    return (
        f"{tuning.trials} tuning trials per loss and setup, each with {tuning.seeds} tuning seeds "
        f"({first}..{first + tuning.seeds - 1}), selected on the mean validation metric, then "
        f"{config.num_seeds} report seeds (0..{config.num_seeds - 1})"
    )


@dataclasses.dataclass(frozen=True)
class Difference:
    """A loss's paired difference to the baseline on one metric, over the report seeds.

    ``mean`` is loss minus baseline; ``low``/``high`` the two-sided t-interval of the mean
    difference (NaN with fewer than two seeds); ``verdict`` "better", "worse" or "no detectable
    difference" in the metric's own direction.
    """

    mean: float
    low: float
    high: float
    verdict: str

    def text(self) -> str:
        if np.isnan(self.low):
            return f"{self.mean:+.4f}"
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def paired_difference(cell: Cell, base: Cell, metric: str) -> Difference:
    """``cell`` minus ``base`` on ``metric`` per report seed: the mean and its t-interval at
    ``CONFIDENCE``; "better" or "worse" when the interval excludes 0."""
    d = np.asarray(cell.metrics[metric], np.float64) - np.asarray(base.metrics[metric], np.float64)
    mean = float(d.mean())
    if d.size < 2:
        return Difference(mean, float("nan"), float("nan"), "too few seeds to tell")
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    low, high = mean - half, mean + half
    sign = 1.0 if higher_is_better(metric) else -1.0
    if sign * low > 0 and sign * high > 0:
        verdict = "better"
    elif sign * low < 0 and sign * high < 0:
        verdict = "worse"
    else:
        verdict = "no detectable difference"
    return Difference(mean, float(low), float(high), verdict)


def flags(cell: Cell) -> list[str]:
    """What to know about a cell's selection, read off the loss's spec: a tuned value that makes
    it the baseline (its values equal cross-entropy's on random logits), and a value at an end of
    its spec's range or of the learning-rate grid (the optimum may lie outside)."""
    if cell.tuning is None:
        return []
    spec = jaxloss.loss_spec(cell.loss)
    selected = cell.tuning.selected
    notes = []
    tuned = {n: v for n, v in selected.items() if n != "learning_rate"}
    if cell.loss != BASELINE and tuned and not spec.stochastic:
        rng = np.random.default_rng(0)
        num_classes = len(cell.train_class_counts)
        logits = rng.normal(scale=3.0, size=(64, num_classes)).astype(np.float32)
        labels = rng.integers(0, num_classes, size=64)
        key = jax.random.key(0)
        counts = np.asarray(cell.train_class_counts)
        hyperparameters = {**spec.hyperparameters(), **tuned}
        if "k" in hyperparameters:
            hyperparameters["k"] = min(hyperparameters["k"], num_classes - 1)
        values = jaxloss.get_loss(cell.loss, class_counts=counts, **hyperparameters)(
            logits, labels, key=key
        )
        reference = jaxloss.get_loss(BASELINE)(logits, labels, key=key)
        if np.allclose(values, reference, rtol=1e-5, atol=1e-6):
            values_text = ", ".join(f"{n} = {v:.3g}" for n, v in tuned.items())
            notes.append(f"degenerate: {values_text} makes it {BASELINE}")
    for name, value in tuned.items():
        interval = spec.ranges[name]
        for end, which in ((interval.low, "lowest"), (interval.high, "highest")):
            if np.isclose(value, end):
                notes.append(f"{name} = {value:.3g} is the {which} of its range")
    rates = cell.tuning.grid["learning_rate"]
    rate = selected["learning_rate"]
    for end, which in ((min(rates), "lowest"), (max(rates), "highest")):
        if np.isclose(rate, end):
            notes.append(f"learning rate {rate:.3g} is the {which} tried")
    if not cell.tuning.stable[cell.tuning.best]:
        notes.append("every trial was unstable on some tuning seed")
    return notes


def _pairs(cells: Sequence[Cell], setup: str):
    rows = [c for c in cells if c.setup == setup]
    base = next((c for c in rows if c.loss == BASELINE), None)
    return rows, base


def _verdicts(rows: Sequence[Cell], base: Cell, name: str):
    """Each loss's paired difference to ``base`` on ``name``, the detectably better and worse
    losses, and the better one with the largest gain (None if none is better)."""
    differences = {c.loss: paired_difference(c, base, name) for c in rows if c is not base}
    better = [loss for loss, d in differences.items() if d.verdict == "better"]
    worse = [loss for loss, d in differences.items() if d.verdict == "worse"]
    sign = 1.0 if higher_is_better(name) else -1.0
    pick = max(better, key=lambda loss: sign * differences[loss].mean) if better else None
    return differences, better, worse, pick


def headline(cells: Sequence[Cell]) -> str:
    """One line per setup: the loss with the largest detectable gain over cross-entropy on the
    setup's metric and on ECE (the README's summary of the comparison page)."""
    lines = []
    for setup in _setups(cells):
        rows, base = _pairs(cells, setup)
        if base is None:
            continue
        metric = headline_metric(rows)
        parts = []
        for name in (metric, "ece"):
            differences, _, _, pick = _verdicts(rows, base, name)
            what = "ECE" if name == "ece" else name.replace("_", " ")
            parts.append(
                f"{what}: **{pick}** ({differences[pick].text()})"
                if pick
                else f"{what}: no loss detectably better than {BASELINE}"
            )
        lines.append(f"- **{setup}**: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def which_loss_when(cells: Sequence[Cell], *, heading: str = "##") -> str:
    """Per setup, the advice the verdicts support: the loss with the largest detectable gain over
    cross-entropy on the setup's metric and on ECE (cross-entropy if none), what is detectably
    worse, and the flagged selections. ``heading``: the Markdown level of its title."""
    lines = [f"{heading} Which loss when", ""]
    for setup in _setups(cells):
        rows, base = _pairs(cells, setup)
        metric = headline_metric(rows)
        lines.append(f"**{setup}** (ranked by test {metric.replace('_', ' ')}):")
        if base is None:
            lines += [f"- no {BASELINE} cell to compare with.", ""]
            continue
        for name in (metric, "ece"):
            differences, better, worse, pick = _verdicts(rows, base, name)
            what = "calibration (ECE)" if name == "ece" else name.replace("_", " ")
            if better:
                others = [loss for loss in better if loss != pick]
                also = f"; also better: {', '.join(others)}" if others else ""
                lines.append(
                    f"- for {what}: **{pick}** ({differences[pick].text()} vs {BASELINE}){also}."
                )
            else:
                lines.append(f"- for {what}: **{BASELINE}**: no loss is detectably better.")
            if worse:
                lines.append(f"  Detectably worse: {', '.join(worse)}.")
        flagged = [f"{c.loss} ({'; '.join(flags(c))})" for c in rows if flags(c)]
        if flagged:
            lines.append(f"- flagged selections: {'; '.join(flagged)}.")
        lines.append("")
    return "\n".join(lines)


def how_to_read(num_seeds: int) -> str:
    """What the margins, the spread and the test are."""
    return "\n".join(
        [
            "## How to read this",
            "",
            f"- **Margin**: a loss's test metric minus cross-entropy's, per report seed (the same "
            f"seed gives every loss the same data order and, for the same head, the same "
            f"initialization), averaged over the {num_seeds} report seeds.",
            f"- **Interval**: the two-sided {CONFIDENCE:.0%} Student-t interval of that mean "
            "difference (n - 1 degrees of freedom; the spread is the paired differences' sample "
            "standard deviation). **better** / **worse**: the interval excludes 0 in the "
            "metric's direction (higher accuracy, lower ECE); otherwise **no detectable "
            "difference**, which is not evidence of equality.",
            "- **Spread** in the tables: mean ± sample standard deviation over the report seeds.",
            "- **Selection rule**: every trial is trained with each tuning seed; a trial whose "
            "model diverged (a non-finite training loss) or collapsed (last validation accuracy "
            "below half of its best, or its best within twice chance) on any tuning seed ranks "
            "below every stable one; then the highest mean validation metric over the tuning "
            "seeds at each model's reported epoch; ties go to the lower mean validation NLL, "
            "then the smaller learning rate. Report seeds never take part in the selection.",
            "- **Flags**: a tuned value that makes the loss cross-entropy (checked on random "
            "logits), or a value at an end of its spec's range or of the learning-rate grid.",
            "",
        ]
    )


def verdict_table(cells: Sequence[Cell]) -> str:
    """Per setup and loss: the paired difference to cross-entropy on the setup's metric and on
    ECE, with intervals and verdicts."""
    lines = ["## Ranking: each loss against cross-entropy (paired, report seeds)", ""]
    lines.append(
        "| setup | metric | loss | margin [interval] | verdict | ECE margin [interval] "
        "| ECE verdict |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for setup in _setups(cells):
        rows, base = _pairs(cells, setup)
        metric = headline_metric(rows)
        if base is None:
            continue
        sign = 1.0 if higher_is_better(metric) else -1.0
        for c in sorted(rows, key=lambda c: -sign * c.metrics[metric].mean()):
            if c is base:
                continue
            d, e = paired_difference(c, base, metric), paired_difference(c, base, "ece")
            lines.append(
                f"| {setup} | {metric} | {c.loss} | {d.text()} | {d.verdict} | {e.text()} | "
                f"{e.verdict} |"
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
    """Every trial of every cell: its values, each tuning seed's validation score, their mean,
    the mean validation NLL, whether it was stable and its rank; the selected trial in bold."""
    tuned = [c for c in cells if c.tuning is not None]
    if not tuned:
        return "## Tuning\n\nNone: every loss ran with its papers' defaults.\n"
    lines = [
        "## Every trial (validation split; per tuning seed, mean, mean NLL; the selected one in "
        "bold, unstable ones marked ✗)",
        "",
    ]
    for setup in _setups(tuned):
        lines += [f"### {setup}", ""]
        for c in (c for c in tuned if c.setup == setup):
            t = c.tuning
            rank = {trial: r for r, trial in enumerate(t.order)}
            means = t.mean_scores()
            nll = np.mean(np.asarray(t.nll, np.float64), axis=1)
            trials = []
            for i in range(len(t.scores)):
                values = ", ".join(f"{n}={t.grid[n][i]:.3g}" for n in t.grid)
                seeds = "/".join(f"{s:.4f}" for s in t.scores[i])
                mark = "" if t.stable[i] else " ✗"
                text = (
                    f"{values}: {seeds} → {means[i]:.4f} (nll {nll[i]:.3f}, #{rank[i] + 1}){mark}"
                )
                trials.append(f"**{text}**" if i == t.best else text)
            lines.append(
                f"- **{c.loss}** ({t.metric}, {len(t.scores)} trials × seeds "
                f"{', '.join(map(str, t.seeds))}): " + "; ".join(trials)
            )
        lines.append("")
    return "\n".join(lines)


def floor_section(cells: Sequence[Cell], setup: str, floor: float) -> str:
    """For every loss whose mean test accuracy on ``setup`` is below ``floor``: its report seeds'
    training curves and the learning rates at which its tuning models were unstable."""
    below = [c for c in cells if c.setup == setup and c.metrics["accuracy"].mean() < floor]
    lines = [f"## Below {floor:.2f} test accuracy on {setup}", ""]
    if not below:
        lines += [f"None: every loss reaches a mean test accuracy of {floor:.2f} on {setup}.", ""]
        return "\n".join(lines)
    for c in below:
        per_seed = ", ".join(f"{a:.4f}" for a in c.metrics["accuracy"])
        lines.append(f"- **{c.loss}**: test accuracy per report seed {per_seed}.")
        losses, accuracy = c.curves["train/loss"], c.curves["validation/accuracy"]
        for s in range(losses.shape[1]):
            curve = " ".join(f"{v:.3g}" for v in losses[:, s])
            validation = " ".join(f"{v:.3f}" for v in accuracy[:, s])
            lines.append(
                f"  - seed {s}: training loss per epoch {curve}; validation accuracy {validation}."
            )
        if c.tuning is not None:
            rates = np.asarray(c.tuning.grid["learning_rate"])
            unstable = sorted(
                {float(r) for r, ok in zip(rates, c.tuning.stable, strict=True) if not ok}
            )
            text = ", ".join(f"{r:.3g}" for r in unstable) or "none"
            lines.append(f"  - learning rates with a model unstable on a tuning seed: {text}.")
    lines.append("")
    return "\n".join(lines)


README_START = "<!-- comparison table: written by experiments/compare.py --readme -->"
README_END = "<!-- end of comparison table -->"
HEADLINE_START = "<!-- comparison headline: written by experiments/compare.py --readme -->"
HEADLINE_END = "<!-- end of comparison headline -->"
# The page holding the full table, relative to the README.
COMPARISON_PAGE = ("docs", "guide", "comparison.md")


def summary_table(cells: Sequence[Cell]) -> str:
    """One row per loss: each setup's ranking metric and ECE (mean ± std over seeds), the best of
    each column in bold, and the cell's verdict against cross-entropy (▲ better, ▼ worse): the
    comparison page's table."""
    setups = _setups(cells)
    losses = _losses(cells)
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
    marks = {"better": " ▲", "worse": " ▼"}
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
            base = found.get((setup, BASELINE))
            mark = ""
            if base is not None and cell is not base:
                mark = marks.get(paired_difference(cell, base, metric).verdict, "")
            texts.append((f"**{text}**" if wins else text) + mark)
        lines.append(f"| {loss} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def _replace_between(path: str, start_marker: str, end_marker: str, text: str) -> None:
    with open(path) as f:
        old = f.read()
    start, end = old.index(start_marker), old.index(end_marker)
    with open(path, "w") as f:
        f.write(old[: start + len(start_marker)] + "\n" + text + "\n" + old[end:])


def update_readme(cells: Sequence[Cell], path: str, *, commit: str, minutes: float) -> None:
    """Writes this run's results into the README at ``path`` (its headline, between its markers)
    and into the comparison page beside it (``docs/guide/comparison.md``: the table and "which
    loss when"), naming the commit and the run's time: the claims about the comparison are
    generated, not written by hand."""
    note = (
        f"_Written by `compare.py --readme` from commit {commit} in {minutes:.1f} min; "
        f"▲/▼: detectably better/worse than {BASELINE} (paired {CONFIDENCE:.0%} t-interval over "
        "the report seeds)._"
    )
    _replace_between(path, HEADLINE_START, HEADLINE_END, note + "\n\n" + headline(cells))
    page = os.path.join(os.path.dirname(os.path.abspath(path)), *COMPARISON_PAGE)
    table = note + "\n\n" + summary_table(cells) + "\n\n" + which_loss_when(cells, heading="##")
    _replace_between(page, README_START, README_END, table)


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
    """Every cell's per-seed test metrics, curves, verdicts and tuning record: no timings, so two
    runs of the same code on one machine write the same file."""
    records = []
    for c in cells:
        rows, base = _pairs(cells, c.setup)
        versus = {}
        if base is not None and c is not base:
            for m in (c.selection_metric, "ece"):
                versus[m] = dataclasses.asdict(paired_difference(c, base, m))
        records.append(
            {
                "setup": c.setup,
                "loss": c.loss,
                "test": {m: v.tolist() for m, v in c.metrics.items()},
                "versus_baseline": versus,
                "flags": flags(c),
                "curves": {name: v.tolist() for name, v in c.curves.items()},
                "tuning": None
                if c.tuning is None
                else {
                    "metric": c.tuning.metric,
                    "seeds": c.tuning.seeds,
                    "grid": c.tuning.grid,
                    "validation_scores": c.tuning.scores,
                    "validation_nll": c.tuning.nll,
                    "stable": c.tuning.stable,
                    "order": c.tuning.order,
                    "selected": c.tuning.selected,
                },
            }
        )
    with open(path, "w") as f:
        json.dump(records, f, indent=1)


def _limits(metric: str) -> tuple[float, float]:
    """The range a metric's values can take: [0, 1] for accuracies and ECE, [0, inf) for NLL."""
    return (0.0, np.inf) if metric == "nll" else (0.0, 1.0)


def plot_metric_bars(cells: Sequence[Cell], family: str, path: str) -> None:
    """One panel per setup, one bar per loss (colour and hatch), error bars = std over seeds
    clipped to the metric's range, cross-entropy's mean as a dashed line. ``family``
    "ranking" shows each setup's ranking metric; otherwise the metric named."""
    setups = _setups(cells)
    losses = _losses(cells)
    fig, axes = plt.subplots(1, len(setups), figsize=(3.2 * len(setups) + 2.2, 4.0), squeeze=False)
    for ax, setup in zip(axes[0], setups, strict=True):
        rows = {c.loss: c for c in cells if c.setup == setup}
        metric = headline_metric(list(rows.values())) if family == "ranking" else family
        low, high = _limits(metric)
        means = np.array([rows[loss].metrics[metric].mean() for loss in losses])
        stds = np.array([sample_std(rows[loss].metrics[metric]) for loss in losses])
        errors = np.stack([np.minimum(stds, means - low), np.minimum(stds, high - means)])
        for i, loss in enumerate(losses):
            style = _style(losses, loss)
            ax.bar(
                i,
                means[i],
                0.8,
                yerr=errors[:, i : i + 1],
                capsize=2,
                color=style["color"],
                hatch=style["hatch"],
                edgecolor="white" if style["hatch"] else style["color"],
                label=loss,
            )
        if BASELINE in rows:
            ax.axhline(
                rows[BASELINE].metrics[metric].mean(),
                color="black",
                ls="--",
                lw=0.8,
                label=f"{BASELINE} (mean)",
            )
        ax.set_xticks([])
        ax.set_title(setup)
        ax.set_ylabel(f"test {metric.replace('_', ' ')}")
        if metric == "nll":
            ax.set_yscale("log")
        else:
            top = np.nanmax(means + errors[1])
            bottom = np.nanmin(means - errors[0])
            pad = 0.05 * max(top - bottom, 0.01)
            ax.set_ylim(max(low, bottom - pad), min(high, top + pad))
    direction = "higher" if family == "ranking" or higher_is_better(family) else "lower"
    fig.suptitle(
        f"Test {family if family != 'ranking' else 'ranking metric'} per setup "
        f"({direction} is better; mean ± std over seeds, clipped to the metric's range)"
    )
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(0.995, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_reliability(cells: Sequence[Cell], setup: str, losses: Sequence[str], path: str):
    """Reliability diagrams of ``losses`` on ``setup``: the bins of all seeds pooled, and in the
    legend the table's ECE (the mean of the per-seed ECEs)."""
    found = [c for name in losses for c in cells if c.setup == setup and c.loss == name]
    if not found:
        return
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 5.4), squeeze=False)
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
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_per_class_recall(cells: Sequence[Cell], setup: str, path: str) -> None:
    """Test recall per class (head to tail, mean over seeds) of every loss on ``setup``."""
    found = [c for c in cells if c.setup == setup]
    if not found:
        return
    losses = _losses(cells)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    order = np.argsort(-found[0].train_class_counts, kind="stable")
    for c in found:
        recall = np.nanmean(c.per_class_recall, axis=0)[order]
        style = _style(losses, c.loss)
        ax.plot(
            recall,
            marker=style["marker"],
            ms=4,
            label=c.loss,
            color=style["color"],
            lw=2.0 if c.loss == BASELINE else 1.0,
            ls="--" if c.loss == BASELINE else "-",
        )
    counts = found[0].train_class_counts
    ax.set_xticks(range(len(order)), [f"{k}\n({counts[k]})" for k in order])
    ax.set_xlabel("class (training examples), head to tail")
    ax.set_ylabel("test recall")
    ax.set_ylim(top=1.0)
    ax.set_title(f"Per-class recall on {setup} (mean over seeds)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_sensitivity(cells: Sequence[Cell], path: str) -> None:
    """Mean validation metric over the tuning seeds against the learning rate per loss (the best
    over the loss's other tuned hyperparameter at each rate; hollow where that trial was
    unstable), one panel per setup with its own metric."""
    tuned = [c for c in cells if c.tuning is not None]
    if not tuned:
        return
    setups = _setups(tuned)
    losses = _losses(cells)
    fig, axes = plt.subplots(1, len(setups), figsize=(3.6 * len(setups) + 2.2, 4.0), squeeze=False)
    for ax, setup in zip(axes[0], setups, strict=True):
        rows = [c for c in tuned if c.setup == setup]
        for c in rows:
            rates = np.asarray(c.tuning.grid["learning_rate"])
            means = c.tuning.mean_scores()
            stable = np.asarray(c.tuning.stable)
            rank = {trial: r for r, trial in enumerate(c.tuning.order)}
            unique = np.unique(rates)
            # At each rate, the trial the selection rule ranks first.
            picked = np.asarray([min(np.flatnonzero(rates == r), key=rank.get) for r in unique])
            style = _style(losses, c.loss)
            ax.plot(
                unique,
                means[picked],
                color=style["color"],
                marker=style["marker"],
                ms=4,
                lw=1,
                label=c.loss,
            )
            unstable = ~stable[picked]
            ax.scatter(
                unique[unstable],
                means[picked][unstable],
                facecolors="white",
                edgecolors=style["color"],
                marker=style["marker"],
                s=16,
                zorder=3,
            )
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(
            f"validation {rows[0].tuning.metric.replace('_', ' ')} (mean of tuning seeds)"
        )
        ax.set_ylim(0.0, 1.0)
        ax.set_title(setup)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Tuning: each rate's best trial (hollow: unstable on a tuning seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(
    cells: Sequence[Cell],
    workdir: str,
    *,
    calibration_setup: str,
    calibration_losses: Sequence[str],
    long_tail_setup: str,
    floor_setup: str | None = None,
    floor: float = 0.9,
    header: str = "",
) -> str:
    """Writes results.md ("which loss when" first, then how to read it, the verdicts, the
    tables and every trial), results.csv, results.json and the plots; returns the Markdown."""
    os.makedirs(workdir, exist_ok=True)
    num_seeds = cells[0].metrics["accuracy"].size
    parts = [header, which_loss_when(cells), how_to_read(num_seeds), verdict_table(cells)]
    if floor_setup is not None and floor_setup in _setups(cells):
        parts.append(floor_section(cells, floor_setup, floor))
    parts += [markdown_table(cells), tuning_table(cells)]
    text = "\n".join(parts)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    write_csv(cells, os.path.join(workdir, "results.csv"))
    write_json(cells, os.path.join(workdir, "results.json"))
    for family in ("ranking", *(m for m in ("ece", "nll") if m in cells[0].metrics)):
        plot_metric_bars(cells, family, os.path.join(workdir, f"bars_{family}.png"))
    plot_reliability(
        cells, calibration_setup, calibration_losses, os.path.join(workdir, "reliability.png")
    )
    plot_per_class_recall(cells, long_tail_setup, os.path.join(workdir, "per_class_recall.png"))
    plot_sensitivity(cells, os.path.join(workdir, "sensitivity.png"))
    return text
