"""The end of a run as text: the reported epoch's metrics per model and their mean ± std.

The reported values themselves (the JSON summary) come from :mod:`jaxloss.training.selection`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["format_summary", "sample_std"]


def sample_std(values: np.ndarray) -> float:
    """The sample standard deviation over seeds (ddof 1), 0 for a single value."""
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table: one row per model, then mean ± std over the models (when there are
    several: one model's row is the result, and a spread of one value would read as 0)."""
    models = summary["models"]
    several = len(models) > 1
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
        if several:
            rows.append(
                [split, "mean ± std", *([""] * len(extra)), ""]
                + [
                    f"{summary['mean'][split][n]:.4f} ± {summary['std'][split][n]:.4f}"
                    for n in names
                ]
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"Reported: {reported}, for "
        + (f"each of {len(models)} models." if several else "the one model.")
    ]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return "\n".join(lines)
