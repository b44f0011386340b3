"""The loss comparison's protocol: equal-budget tuning on validation, then fresh seeds on test.

For every (setup, loss) cell:

1. **Tuning**: ``trials`` configurations of the learning rate (a log grid spanning
   ``learning_rate_decades`` decades around the setup's rate) and of the loss's tuned hyperparameter
   (its spec's range), trained as one population with the tuning seed. Every loss gets the same
   number of trials; a loss with nothing to tune gets them all on the learning rate.
2. **Selection** on the validation split: the setup's ``selection_metric`` (balanced accuracy on
   the long-tailed setup) at each trial's selected epoch.
3. **Report**: the selected configuration trained with ``num_seeds`` seeds that took no part in
   the selection; its test metrics, mean ± std over them.

With ``trials = 0`` the cell is the fixed-defaults protocol: the papers' hyperparameters and the
setup's learning rate, no tuning.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import ml_collections
import numpy as np

import jaxloss
from jaxloss.training import train_and_evaluate
from jaxloss.training.train import higher_is_better, metric_names


@dataclasses.dataclass
class Tuning:
    """What the tuning of one cell tried and chose."""

    grid: dict[str, list[float]]  # hyperparameter -> one value per trial
    scores: list[float]  # the validation selection metric of every trial
    metric: str
    selected: dict[str, float]  # the chosen trial's values
    seconds: float


@dataclasses.dataclass
class Cell:
    """One (setup, loss) cell: per-seed test metrics of the selected configuration."""

    setup: str
    loss: str
    selection_metric: str  # the setup's validation metric: the one it is ranked by
    metrics: dict[str, np.ndarray]  # name -> (num_seeds,)
    per_class_recall: np.ndarray  # (num_seeds, C)
    test_bins: np.ndarray  # (num_seeds, 3, bins): calibration bins (count, confidence, correct)
    train_class_counts: np.ndarray  # (C,)
    seconds: float
    tuning: Tuning | None


def run_config(
    setup_module: Any, loss: str, *, num_seeds: int, top_k: int
) -> ml_collections.ConfigDict:
    """The config of one cell: the setup's own config for ``loss``, with the comparison's settings.

    ``setup_module`` is an experiment config module (``experiments/configs/<setup>.py``) whose
    ``get_config(loss)`` sets the loss and its default hyperparameters. The comparison fixes the
    number of seeds and the top-k cut-off of the metrics and of the top-k losses, turns off the
    progress bar, TensorBoard events and checkpoints (a comparison is re-run, not resumed; its
    report is the record), and changes nothing else.
    """
    config = setup_module.get_config(loss)
    config.num_seeds = num_seeds
    config.top_k = top_k
    if "k" in config.loss.hyperparameters:
        config.loss.hyperparameters.k = top_k
    config.progress_bar = False
    config.tensorboard = False
    config.checkpoint_every_epochs = 0
    return config


def trial_grid(
    spec: jaxloss.LossSpec, learning_rate: float, *, trials: int, decades: float
) -> dict[str, list[float]]:
    """``trials`` configurations: a grid of learning rates x the spec's first tuned hyperparameter.

    The learning rates are log-spaced over ``decades`` decades centred on ``learning_rate``. With a
    tuned hyperparameter, ``floor(sqrt(trials))`` values of it (from its range) times the rest of
    the budget in learning rates; without one, every trial is a learning rate.
    """
    tuned = spec.tuned[:1]
    num_values = math.isqrt(trials) if tuned else 1
    num_rates = trials // num_values
    half = 10 ** (decades / 2)
    rates = np.geomspace(learning_rate / half, learning_rate * half, num_rates)
    grid = {"learning_rate": np.repeat(rates, num_values)}
    for name in tuned:
        grid[name] = np.tile(spec.ranges[name].grid(num_values), num_rates)
    return {name: [float(v) for v in values] for name, values in grid.items()}


def tune(
    config: ml_collections.ConfigDict, *, trials: int, decades: float, seed: int, workdir: str
) -> Tuning:
    """Trains the trial grid of ``config`` as one population and picks the best on validation."""
    start = time.perf_counter()
    spec = jaxloss.loss_spec(config.loss.name)
    grid = trial_grid(spec, config.optimizer.learning_rate, trials=trials, decades=decades)
    tuning_config = ml_collections.ConfigDict(config.to_dict())
    tuning_config.num_seeds = 1
    tuning_config.seed = seed
    tuning_config.population = grid
    # A trial that diverges gets NaN metrics and loses; it does not stop the others.
    tuning_config.stop_on_nan = False
    out = train_and_evaluate(tuning_config, workdir)
    metric = config.selection_metric
    scores = np.asarray(out["best"][f"validation/{metric}"], np.float64)
    # A diverged trial (NaN) never wins.
    ranked = np.where(np.isnan(scores), -np.inf, scores if higher_is_better(metric) else -scores)
    best = int(np.argmax(ranked))
    return Tuning(
        grid=grid,
        scores=scores.tolist(),
        metric=metric,
        selected={name: values[best] for name, values in grid.items()},
        seconds=time.perf_counter() - start,
    )


def run_cell(
    setup: str,
    setup_module: Any,
    loss: str,
    *,
    num_seeds: int,
    top_k: int,
    tuning: ml_collections.ConfigDict,
    workdir: str,
) -> Cell:
    """Tunes (unless ``tuning.trials`` is 0) and reports one cell."""
    config = run_config(setup_module, loss, num_seeds=num_seeds, top_k=top_k)
    start = time.perf_counter()
    chosen = None
    if tuning.trials:
        chosen = tune(
            config,
            trials=tuning.trials,
            decades=tuning.learning_rate_decades,
            seed=tuning.seed,
            workdir=os.path.join(workdir, "tuning"),
        )
        # The selected values as a one-configuration population: traced, so every cell with the
        # same model compiles the same program (a persistent-cache hit), not one per value.
        config.population = {name: (value,) for name, value in chosen.selected.items()}
    out = train_and_evaluate(config, os.path.join(workdir, "final"))
    best = out["best"]
    k = min(top_k, len(out["class_names"]))
    return Cell(
        setup=setup,
        loss=loss,
        selection_metric=config.selection_metric,
        metrics={m: np.asarray(best[f"test/{m}"]) for m in metric_names(k)},
        per_class_recall=np.asarray(best["test/per_class_recall"]),
        test_bins=np.asarray(best["test/bins"]),
        train_class_counts=np.asarray(out["train_class_counts"]),
        seconds=time.perf_counter() - start,
        tuning=chosen,
    )
