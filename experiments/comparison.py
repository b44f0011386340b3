"""The loss comparison's protocol: equal-budget tuning on validation, then fresh seeds on test.

For every loss, and each setup:

1. **Tuning**: ``trials`` configurations of the learning rate (a log grid spanning
   ``learning_rate_decades`` decades around the setup's rate) and of the loss's tuned hyperparameter
   (its spec's range), each trained with ``tuning.seeds`` tuning seeds, all as one population.
   Every loss gets the same number of trials; a loss with nothing to tune gets them all on the
   learning rate.
2. **Selection** on the validation split (:func:`rank_trials`): a trial whose model diverged or
   collapsed on any tuning seed ranks below every stable one; then the highest mean over the
   tuning seeds of the setup's ``selection_metric`` (balanced accuracy on the long-tailed setup) at
   each model's reported epoch; ties go to the lower mean validation NLL, then to the smaller
   learning rate, then to the earlier trial.
3. **Report**: the selected configuration trained with ``num_seeds`` report seeds (0, 1, ...),
   disjoint from the tuning seeds; its test metrics per seed, mean ± std over them.

Setups whose configs differ only in ``selection`` (the epoch reported: the best on validation or
the last) train the same models: their tuning is one run, read at each setup's epochs.

With ``trials = 0`` the cell is the fixed-defaults protocol: the papers' hyperparameters and the
setup's learning rate, no tuning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

import jaxloss
from jaxloss.training import ConfigError, load_datasets, train_and_evaluate
from jaxloss.training.checks import did_you_mean
from jaxloss.training.evaluation import higher_is_better, metric_names

# A model collapsed when its last epoch's validation accuracy fell below this fraction of its
# best epoch's, or when its best stayed within this factor of chance (1 / classes).
COLLAPSE_FRACTION = 0.5
CHANCE_FACTOR = 2.0


@dataclasses.dataclass
class Tuning:
    """What the tuning of one cell tried and chose.

    ``scores`` and ``nll`` are (trials, tuning seeds): each model's validation selection metric and
    NLL at the setup's reported epoch; ``order`` ranks the trials best first (the selection rule
    of :func:`rank_trials`).
    """

    grid: dict[str, list[float]]  # hyperparameter -> one value per trial
    seeds: list[int]  # the tuning seeds
    scores: list[list[float]]
    nll: list[list[float]]
    stable: list[bool]  # per trial: no tuning seed diverged or collapsed
    order: list[int]
    metric: str
    selected: dict[str, float]  # the chosen trial's values
    seconds: float  # of the tuning run (shared by the setups that share it)

    @property
    def best(self) -> int:
        return self.order[0]

    def mean_scores(self) -> np.ndarray:
        return np.mean(np.asarray(self.scores, np.float64), axis=1)


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
    # Per epoch and report seed (epochs, num_seeds): the training loss and validation accuracy.
    curves: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def run_config(
    setup_module: Any,
    loss: str,
    *,
    num_seeds: int,
    top_k: int,
    overrides: Mapping[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """The config of one cell: the setup's own config for ``loss``, with the comparison's settings.

    ``setup_module`` is an experiment config module (``experiments/configs/<setup>.py``) whose
    ``get_config(loss)`` sets the loss and its default hyperparameters. The comparison fixes the
    number of seeds and the top-k cut-off of the metrics and of the top-k losses, turns off the
    progress bar, TensorBoard events and checkpoints (a comparison is re-run, not resumed; its
    report is the record), applies ``overrides`` (nested fields, e.g. a smaller model for a
    test), evaluates each split in one batch when it fits the setup's, and changes nothing else.
    """
    config = setup_module.get_config(loss)
    config.num_seeds = num_seeds
    config.top_k = top_k
    if "k" in config.loss.hyperparameters:
        config.loss.hyperparameters.k = top_k
    config.progress_bar = False
    config.tensorboard = False
    config.checkpoint_every_epochs = 0
    if overrides:
        config.update(overrides)
    # One evaluation batch per split without padding where the splits fit the setup's batch:
    # the same sums, less to compute (digits' 360-example splits filled 512-row batches).
    splits = load_datasets(config.data)
    largest = max(len(splits[split]) for split in ("validation", "test"))
    devices = jax.device_count()
    config.eval_batch_size = min(config.eval_batch_size, -(-largest // devices) * devices)
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


def rank_trials(
    scores: np.ndarray,
    nll: np.ndarray,
    stable: np.ndarray,
    learning_rates: Sequence[float],
    *,
    higher: bool,
) -> list[int]:
    """The trials best first: stable before unstable, then the mean score over the tuning seeds
    (``scores`` (trials, seeds); highest first if ``higher``), then the lower mean NLL, then the
    smaller learning rate, then the earlier trial. NaN means rank last in their group."""
    # Rounded: accuracies are ratios of counts, and equal totals over the seeds must tie whatever
    # the float rounding of each seed's ratio (0.95 + 0.85 < 0.9 + 0.9 in float64).
    mean = np.round(np.mean(np.asarray(scores, np.float64), axis=1), 9)
    mean_nll = np.mean(np.asarray(nll, np.float64), axis=1)
    goodness = np.where(np.isnan(mean), -np.inf, mean if higher else -mean)
    mean_nll = np.where(np.isnan(mean_nll), np.inf, mean_nll)
    rates = np.asarray(learning_rates, np.float64)
    # np.lexsort sorts by the last key first; every key is exact, so the order is deterministic.
    order = np.lexsort(
        (np.arange(len(mean)), rates, mean_nll, -goodness, ~np.asarray(stable, bool))
    )
    return [int(i) for i in order]


def unstable_models(history: Sequence[Mapping[str, Any]], scores: np.ndarray) -> np.ndarray:
    """Per model of a run: whether it diverged (a non-finite training loss in any epoch, or a
    NaN reported score) or collapsed (its last validation accuracy below ``COLLAPSE_FRACTION`` of
    its best, or its best within ``CHANCE_FACTOR`` of chance)."""
    losses = np.stack([np.asarray(r["train/loss"], np.float64) for r in history])
    accuracy = np.stack([np.asarray(r["validation/accuracy"], np.float64) for r in history])
    num_classes = np.asarray(history[0]["validation/per_class_recall"]).shape[-1]
    best = np.nanmax(np.where(np.isnan(accuracy), -np.inf, accuracy), axis=0)
    diverged = ~np.all(np.isfinite(losses), axis=0) | np.isnan(scores)
    collapsed = (accuracy[-1] < COLLAPSE_FRACTION * best) | (best <= CHANCE_FACTOR / num_classes)
    return diverged | ~np.isfinite(accuracy[-1]) | collapsed


def training_key(config: ml_collections.ConfigDict) -> str:
    """What decides the models a config trains: everything but the epoch it reports."""
    as_dict = json.loads(config.to_json_best_effort())
    as_dict.pop("selection", None)
    return json.dumps(as_dict, sort_keys=True)


def tune(
    configs: Mapping[str, ml_collections.ConfigDict],
    *,
    trials: int,
    decades: float,
    seed: int,
    num_tuning_seeds: int,
    workdir: str,
) -> dict[str, Tuning]:
    """Trains the trial grid once, with ``num_tuning_seeds`` seeds per trial, as one population,
    and ranks it for each of ``configs`` (setups that train the same models and differ only in
    the epoch they report)."""
    start = time.perf_counter()
    first = next(iter(configs.values()))
    spec = jaxloss.loss_spec(first.loss.name)
    grid = trial_grid(spec, first.optimizer.learning_rate, trials=trials, decades=decades)
    tuning_config = ml_collections.ConfigDict(first.to_dict())
    tuning_config.num_seeds = num_tuning_seeds
    tuning_config.seed = seed
    tuning_config.population = grid
    tuning_config.selection = "best"
    # A trial that diverges gets NaN metrics and loses; it does not stop the others.
    tuning_config.stop_on_nan = False
    out = train_and_evaluate(tuning_config, workdir)
    seconds = time.perf_counter() - start
    shape = (len(grid["learning_rate"]), num_tuning_seeds)  # member m = trial * seeds + seed
    results = {}
    for setup, config in configs.items():
        reported = out["best"] if config.selection == "best" else out["history"][-1]
        metric = config.selection_metric
        scores = np.asarray(reported[f"validation/{metric}"], np.float64)
        nll = np.asarray(reported["validation/nll"], np.float64)
        unstable = unstable_models(out["history"], scores).reshape(shape)
        stable = ~np.any(unstable, axis=1)
        order = rank_trials(
            scores.reshape(shape),
            nll.reshape(shape),
            stable,
            grid["learning_rate"],
            higher=higher_is_better(metric),
        )
        results[setup] = Tuning(
            grid=grid,
            seeds=list(range(seed, seed + num_tuning_seeds)),
            scores=scores.reshape(shape).tolist(),
            nll=nll.reshape(shape).tolist(),
            stable=stable.tolist(),
            order=order,
            metric=metric,
            selected={name: values[order[0]] for name, values in grid.items()},
            # The setups that share the run share its time.
            seconds=seconds / len(configs),
        )
    return results


def report(setup: str, config: ml_collections.ConfigDict, tuning: Tuning | None, workdir: str):
    """Trains ``config`` (with the tuned values, if any) on the report seeds; returns its cell."""
    start = time.perf_counter()
    config = ml_collections.ConfigDict(config.to_dict())
    if tuning is not None:
        # The selected values as a one-configuration population: traced, so every cell with the
        # same model compiles the same program (a persistent-cache hit), not one per value.
        config.population = {name: (value,) for name, value in tuning.selected.items()}
    out = train_and_evaluate(config, workdir)
    best = out["best"]
    k = min(config.top_k, len(out["class_names"]))
    history = out["history"]
    return Cell(
        setup=setup,
        loss=config.loss.name,
        selection_metric=config.selection_metric,
        metrics={m: np.asarray(best[f"test/{m}"]) for m in metric_names(k)},
        per_class_recall=np.asarray(best["test/per_class_recall"]),
        test_bins=np.asarray(best["test/bins"]),
        train_class_counts=np.asarray(out["train_class_counts"]),
        seconds=time.perf_counter() - start + (tuning.seconds if tuning else 0.0),
        tuning=tuning,
        curves={
            name: np.stack([np.asarray(r[name], np.float64) for r in history])
            for name in ("train/loss", "validation/accuracy")
        },
    )


def check_protocol(
    *,
    setups: Sequence[str],
    available: Sequence[str],
    losses: Sequence[str],
    tuning: Any,
    num_seeds: int,
    top_k: int = 1,
    floor_setup: str | None = None,
    floor: float = 0.0,
) -> None:
    """Raises a ConfigError naming the field of the comparison config that cannot run."""
    for field, names, known in (
        ("setups", setups, available),
        ("losses", losses, jaxloss.available_losses()),
    ):
        for name in names:
            if name not in known:
                raise ConfigError(
                    f"config.{field}: unknown name {name!r}{did_you_mean(name, known)}; choose "
                    f"from {', '.join(known)}."
                )
    for field, value, low in (
        ("tuning.trials", tuning.trials, 0),
        ("tuning.seeds", tuning.seeds, 2),
        ("num_seeds", num_seeds, 1),
        ("top_k", top_k, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"config.{field} must be an integer >= {low}, got {value!r}.")
    # A known setup that this run leaves out only skips the floor section of the report.
    if floor_setup is not None and floor_setup not in available:
        raise ConfigError(
            f"config.floor_setup: unknown setup {floor_setup!r}"
            f"{did_you_mean(floor_setup, available)}; choose from {', '.join(available)} or None."
        )
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0.0 <= floor <= 1.0:
        raise ConfigError(f"config.floor must be an accuracy in [0, 1], got {floor!r}.")
    if tuning.seed < num_seeds and tuning.seed + tuning.seeds > 0:
        raise ConfigError(
            f"config.tuning.seed ({tuning.seed}) must leave the tuning seeds "
            f"[{tuning.seed}, {tuning.seed + tuning.seeds}) disjoint from the report seeds "
            f"[0, {num_seeds}): set it to {num_seeds} or more."
        )


def run_loss(
    setups: Mapping[str, Any],
    loss: str,
    *,
    num_seeds: int,
    top_k: int,
    tuning: ml_collections.ConfigDict,
    workdir: str,
    overrides: Mapping[str, Any] | None = None,
) -> list[Cell]:
    """Tunes (unless ``tuning.trials`` is 0) and reports ``loss`` on every setup (name ->
    config module), one cell per setup in their order. Setups that train the same models share
    one tuning run."""
    configs = {
        setup: run_config(module, loss, num_seeds=num_seeds, top_k=top_k, overrides=overrides)
        for setup, module in setups.items()
    }
    tunings: dict[str, Tuning | None] = dict.fromkeys(configs)
    if tuning.trials:
        groups: dict[str, dict[str, ml_collections.ConfigDict]] = {}
        for setup, config in configs.items():
            groups.setdefault(training_key(config), {})[setup] = config
        for group in groups.values():
            tunings.update(
                tune(
                    group,
                    trials=tuning.trials,
                    decades=tuning.learning_rate_decades,
                    seed=tuning.seed,
                    num_tuning_seeds=tuning.seeds,
                    workdir=os.path.join(workdir, next(iter(group)), loss, "tuning"),
                )
            )
    return [
        report(setup, config, tunings[setup], os.path.join(workdir, setup, loss, "final"))
        for setup, config in configs.items()
    ]
