"""The end of a run: the selected epoch's metrics per model, their mean ± std, as JSON and text."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxloss.training.train import Population

__all__ = ["format_summary", "sample_std", "summarize"]


def summarize(
    best: dict[str, np.ndarray],
    population: Population,
    *,
    metric_names: list[str],
    selection: str,
    selection_metric: str,
) -> dict[str, Any]:
    """The reported epoch of every model and its validation and test metrics (JSON-ready).

    Args:
      best: the loop's per-model record of the reported epoch (``"epoch"``, ``"<split>/<metric>"``).
      population: the run's models (their seeds and hyperparameter values).
      metric_names: the scalar metrics to report.
      selection: ``"best"`` (the epoch with the best validation ``selection_metric``) or ``"last"``.
      selection_metric: the validation metric that picked the epoch.
    """
    splits = ("validation", "test")
    models = []
    for m in range(population.size):
        model = {"seed": int(population.seeds[m]), "epoch": int(best["epoch"][m])}
        model.update({k: float(v[m]) for k, v in population.values.items()})
        for split in splits:
            model[split] = {name: float(best[f"{split}/{name}"][m]) for name in metric_names}
        models.append(model)
    statistics = {}
    for label, reduce in (("mean", np.mean), ("std", sample_std)):
        statistics[label] = {
            split: {
                name: float(reduce(np.asarray(best[f"{split}/{name}"], np.float64)))
                for name in metric_names
            }
            for split in splits
        }
    return {
        "selection": selection,
        "selection_metric": selection_metric,
        "models": models,
        **statistics,
    }


def sample_std(values: np.ndarray) -> float:
    """The sample standard deviation over seeds (ddof 1), 0 for a single value."""
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table: one row per model, then mean ± std over the models."""
    models = summary["models"]
    names = list(summary["mean"]["test"])
    reported = (
        "the last epoch"
        if summary["selection"] == "last"
        else f"the epoch with the best validation {summary['selection_metric']}"
    )
    extra = [k for k in models[0] if k not in ("seed", "epoch", "validation", "test")]
    header = ["split", "seed", *extra, "epoch", *names]
    rows = []
    for split in ("validation", "test"):
        for model in models:
            rows.append(
                [split, str(model["seed"]), *(f"{model[k]:.4g}" for k in extra)]
                + [str(model["epoch"])]
                + [f"{model[split][n]:.4f}" for n in names]
            )
        rows.append(
            [split, "mean ± std", *([""] * len(extra)), ""]
            + [f"{summary['mean'][split][n]:.4f} ± {summary['std'][split][n]:.4f}" for n in names]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"Reported: {reported}, for each of {len(models)} models."]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return "\n".join(lines)
