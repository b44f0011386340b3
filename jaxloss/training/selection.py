"""Model selection: the epoch each model reports (the best on validation, or the last) and the
reported values, per model and as mean ± std over the population (JSON-ready).

Selection reads the validation split only, never test; the direction of the selection metric
comes from the metric table (:data:`jaxloss.training.evaluation.METRICS`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxloss.training.evaluation import NUM_BINS, SPLITS, higher_is_better
from jaxloss.training.population import Population
from jaxloss.training.summary import sample_std

__all__ = ["empty_best", "summarize", "update_best"]


def empty_best(num_models: int, num_classes: int, metric_names: list[str]) -> dict:
    """The record of the reported epoch before any epoch: epoch -1, NaN metrics, empty bins.

    Args:
      num_models: the population's size M.
      num_classes: C, the length of ``per_class_recall``.
      metric_names: the recorded metrics (``per_class_recall`` has shape (M, C), the others (M,)).

    Example:
      >>> best = empty_best(2, 3, ["accuracy", "per_class_recall"])
      >>> best["epoch"].tolist(), best["test/per_class_recall"].shape, best["validation/bins"].shape
      ([-1, -1], (2, 3), (2, 3, 15))
    """
    best = {"epoch": np.full((num_models,), -1, np.int64)}
    for split in SPLITS:
        for name in metric_names:
            shape = (num_models, num_classes) if name == "per_class_recall" else (num_models,)
            best[f"{split}/{name}"] = np.full(shape, np.nan)
        best[f"{split}/bins"] = np.zeros((num_models, 3, NUM_BINS))
    return best


def update_best(best: dict, record: dict, selection: str, *, last: bool = False) -> dict:
    """Keeps, per model, the epoch with the best validation ``selection`` metric (first wins), or
    with ``last`` the latest epoch (a fixed budget, as the label relaxation paper reports).

    Example:
      Two models: the second one's validation NLL got worse at epoch 1, so it keeps epoch 0.

      >>> import numpy as np
      >>> best = empty_best(2, 3, ["nll"])
      >>> for epoch, nll in enumerate([[0.9, 0.5], [0.7, 0.6]]):
      ...     record = {f"{split}/nll": np.array(nll) for split in SPLITS}
      ...     record.update({f"{split}/bins": np.zeros((2, 3, NUM_BINS)) for split in SPLITS})
      ...     best = update_best(best, {"epoch": np.array([epoch] * 2), **record}, "nll")
      >>> best["epoch"].tolist(), best["test/nll"].tolist()
      ([1, 0], [0.7, 0.5])
    """
    score = record[f"validation/{selection}"]
    previous = best[f"validation/{selection}"]
    improved = score > previous if higher_is_better(selection) else score < previous
    better = (best["epoch"] < 0) | improved | last
    updated = {}
    for key, value in best.items():
        mask = better.reshape((-1,) + (1,) * (value.ndim - 1))
        updated[key] = np.where(mask, record[key], value)
    return updated


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
    models = []
    for m in range(population.size):
        model = {"seed": int(population.seeds[m]), "epoch": int(best["epoch"][m])}
        model.update({k: float(v[m]) for k, v in population.values.items()})
        for split in SPLITS:
            model[split] = {name: float(best[f"{split}/{name}"][m]) for name in metric_names}
        models.append(model)
    statistics = {}
    for label, reduce in (("mean", np.mean), ("std", sample_std)):
        statistics[label] = {
            split: {
                name: float(reduce(np.asarray(best[f"{split}/{name}"], np.float64)))
                for name in metric_names
            }
            for split in SPLITS
        }
    return {
        "selection": selection,
        "selection_metric": selection_metric,
        "models": models,
        **statistics,
    }
