"""``train_and_evaluate``: the epoch loop that runs a config, with its checkpoints and logs.

Everything a run does is a function of the config: the data order of model i comes from
``(seed + i, epoch)``, its initialization and loss noise from ``key(seed + i)`` folded with the
step. A run killed at any point and started again in the same workdir resumes from the last
finished epoch and ends with exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from jaxloss import data
from jaxloss.training import checks, defaults, distributed, logs
from jaxloss.training.checkpoint import Checkpointer, CheckpointError, config_differences
from jaxloss.training.checks import ConfigError
from jaxloss.training.evaluation import evaluate, metric_names
from jaxloss.training.lock import workdir_lock
from jaxloss.training.mesh import make_mesh
from jaxloss.training.population import Population, make_population
from jaxloss.training.selection import empty_best, summarize, update_best
from jaxloss.training.train import StepFunctions, make_steps

__all__ = ["load_datasets", "train_and_evaluate"]


def load_datasets(
    config: ml_collections.ConfigDict, splits: dict[str, data.Source] | None = None
) -> dict[str, data.Source]:
    """The train, validation and test splits a ``data`` config describes, as random-access
    sources that read their features only when a batch asks for them.

    ``config.name`` is a registered dataset or the path of the user's own data
    (:func:`jaxloss.data.load_splits`); ``splits`` given from Python (checked by
    :func:`jaxloss.data.check_splits`) replace what it names. The long-tail subsampling
    (``imbalance_factor`` > 1) and the label noise (``label_noise`` > 0) apply to the train split
    only; validation and test stay as loaded.

    Example:
      >>> config = defaults.get_config().data
      >>> config.imbalance_factor = 10.0
      >>> {split: len(source) for split, source in load_datasets(config).items()}
      {'train': 421, 'validation': 359, 'test': 360}
    """
    if splits is None:
        splits = data.load_splits(
            config.name,
            seed=config.split_seed,
            data_dir=config.data_dir,
            **config.options,
        )
    else:
        splits = data.check_splits(splits)
    train = splits["train"]
    if config.imbalance_factor > 1.0:
        train = data.long_tailed(
            train,
            imbalance_factor=config.imbalance_factor,
            kind=config.imbalance_kind,
            seed=config.split_seed,
        )
    if config.label_noise > 0.0:
        train = data.with_label_noise(
            train,
            rate=config.label_noise,
            block=config.noise_block,
            seed=config.split_seed,
        )
    splits["train"] = train
    return splits


def _train_epoch(run, state, batches, *, epoch, keys):
    """One epoch of ``batches`` (this host's rows of every member's own shuffle, G steps per
    item); returns the state and per-step losses and accuracies (T, M)."""
    steps, population, num_steps, config = run.steps, run.population, run.num_steps, run.config
    member = jax.device_put(population.values)
    losses, accuracies = [], []
    bar = logs.progress_bar(
        num_steps, epoch=epoch, num_epochs=config.num_epochs, enabled=config.progress_bar
    )
    start = time.perf_counter()
    done = 0
    while done < num_steps:
        state, stats = steps.train(
            state, data.global_batch(next(batches), steps.batch_sharding), keys, member=member
        )
        distributed.keep_in_step(stats)  # Gloo deadlocks when a process runs ahead (CPU)
        losses.append(stats["loss"])
        accuracies.append(stats["accuracy"])
        group = stats["loss"].shape[0]
        done += group
        bar.update(group)
        if not bar.disable and done % config.log_every_steps < group:
            seconds = time.perf_counter() - start
            # Host copies: a jnp op on the global arrays would be a computation of all processes
            # that process 0 (the only one with a bar) ran alone, and wait forever.
            last = jax.device_get(stats)
            bar.set_postfix(
                loss=f"{last['loss'][-1].mean():.4f}",
                accuracy=f"{last['accuracy'][-1].mean():.3f}",
                examples_per_s=f"{done * config.batch_size * population.size / seconds:.0f}",
            )
    bar.close()
    return (
        state,
        np.concatenate(jax.device_get(losses)),
        np.concatenate(jax.device_get(accuracies)),
    )


def steps_per_call(num_steps: int, limit: int) -> int:
    """The most optimizer steps, at most ``limit``, that one compiled call can take so that calls
    never straddle an epoch: the largest divisor of the epoch's ``num_steps`` not above it."""
    return max(g for g in range(1, min(limit, num_steps) + 1) if num_steps % g == 0)


def _check_finite(losses: np.ndarray, *, epoch: int, num_steps: int, checkpoints: str | None):
    bad = np.argwhere(~np.isfinite(losses))
    if bad.size:
        step, seed = bad[0]
        kept = (
            f"The last good checkpoint (epoch {epoch - 1}) is kept in {checkpoints}."
            if checkpoints and epoch > 0
            else "No checkpoint was written."
        )
        raise FloatingPointError(
            f"The training loss became {losses[step, seed]} at step {epoch * num_steps + step} "
            f"(epoch {epoch}, model index {seed}); training stopped. {kept} Lower the learning "
            "rate or check the loss hyperparameters."
        )


def _check_config(
    config: ml_collections.ConfigDict, workdir: epath.Path, data_record: dict
) -> dict:
    """Checks that a resumed run has the config it was started with (``config.json``), with
    ``data_record`` (:func:`jaxloss.data.provenance`: the own data's fingerprint) merged in.

    Returns the config as JSON, which the checkpoints hold and check too (deleting config.json
    does not let a run resume under another config).
    """
    path = workdir / "config.json"
    current = {**json.loads(config.to_json_best_effort()), **data_record}
    if path.exists():
        saved = json.loads(path.read_text())
        changed = config_differences(saved, current)
        if changed:
            raise CheckpointError(
                f"{workdir} holds a run with a different config (differences in: "
                f"{', '.join(changed)}). Use a new workdir to train with this config."
            )
    return current


def _write_config(config_json: dict, workdir: epath.Path) -> None:
    """Writes ``config.json`` (process 0) and checks that every process sees it."""
    path = workdir / "config.json"
    if jax.process_index() == 0:
        path.write_text(json.dumps(config_json, indent=2, sort_keys=True))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jaxloss: config.json written")
        # Orbax saves are collective and need one directory that every process sees: without it
        # the first save would wait forever. Every process learns whether any cannot see it.
        sees = multihost_utils.process_allgather(np.asarray(path.exists()))
        if not np.all(sees):
            blind = np.flatnonzero(~np.asarray(sees)).tolist()
            raise CheckpointError(
                f"Processes {blind} do not see {path}, which process 0 wrote: the workdir must be "
                "shared storage (a network file system or a bucket such as gs://...) that every "
                "process reads and writes."
            )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    splits: dict[str, data.Source] | None = None,
) -> dict[str, Any]:
    """Trains a population of models and evaluates them on validation and test every epoch.

    The population (:func:`jaxloss.training.population.make_population`) is ``config.num_seeds`` seeds
    of each configuration of ``config.population`` (learning rates and continuous loss
    hyperparameters; one configuration when it is absent), trained in one compiled step.

    The reported epoch of each model is the last one with ``config.selection="last"``; otherwise
    the best on the validation split (``config.selection_metric``,
    default accuracy; lowest for ``ece`` and ``nll``, highest otherwise), never on test. The run writes ``config.json``, ``metrics.jsonl``
    (one line per epoch), TensorBoard events (``tensorboard/``) and Orbax checkpoints
    (``checkpoints/``, every ``config.checkpoint_every_epochs`` epochs; 0 disables them) into
    ``workdir``, and resumes from the latest checkpoint found there.

    Args:
      config: an experiment config (see ``experiments/configs/digits.py`` for every field).
      workdir: the run directory (created if needed).
      splits: train, validation and test sources to train on instead of ``config.data.name``
        (e.g. :func:`jaxloss.data.from_arrays`); ``config.json`` then records them and their
        fingerprint in place of the name.

    Returns:
      A dict with
        ``"summary"``: the reported epoch's validation and test metrics per model and their
        mean ± std (also written to ``workdir/results.json``; see
        :func:`jaxloss.training.summary.format_summary`);
        ``"best"``: the selected epoch of each seed, ``{"epoch": (S,), "validation/<metric>": (S,),
        "test/<metric>": (S,), "test/per_class_recall": (S, C), "<split>/bins": (S, 3, 15)}``
        (the calibration bins of the selected epoch: :func:`jaxloss.training.evaluation.unstack_bins`
        makes them :class:`jaxloss.metrics.CalibrationBins` for a reliability diagram)
        (metrics: accuracy, top{k}_accuracy, balanced_accuracy, macro_top{k}_accuracy, ece, nll);
        ``"history"``: one dict per epoch with ``"epoch"``, ``"train/loss"``,
        ``"train/accuracy"`` and every validation and test metric, each of shape (S,) (per-class
        recall (S, C));
        ``"class_names"``, ``"train_class_counts"``: the classes and their training counts;
        ``"config"``: the config as run.

    Raises:
      ConfigError: a config mistake, found before anything is written; the message names the
        field.
      FloatingPointError: the training loss became NaN or infinite; the message names the step.
      CheckpointError: the workdir holds a checkpoint of a different config, or a damaged one.
      WorkdirInUseError: another run holds the workdir (:mod:`jaxloss.training.lock`); the
        message names its process and host.

    Example:
      One seed, one epoch of a small MLP on iris (seconds on a CPU), without checkpoints:

      >>> import os, tempfile
      >>> config = defaults.get_config()
      >>> config.data.name, config.top_k, config.model.hidden_sizes = "iris", 2, (16,)
      >>> config.num_seeds, config.num_epochs, config.checkpoint_every_epochs = 1, 1, 0
      >>> config.progress_bar = config.tensorboard = False
      >>> workdir = tempfile.mkdtemp()
      >>> out = train_and_evaluate(config, workdir)
      >>> out["best"]["epoch"].tolist(), out["best"]["test/per_class_recall"].shape
      ([0], (1, 3))
      >>> 0 <= out["summary"]["mean"]["test"]["accuracy"] <= 1, sorted(os.listdir(workdir))
      (True, ['config.json', 'metrics.jsonl', 'results.json'])
    """
    workdir = epath.Path(workdir)
    run = _prepare(config, workdir, splits)
    config = run.config
    # One run per workdir: a second one stops here, before it reads or writes anything.
    with workdir_lock(workdir):
        config_json = _check_config(config, workdir, run.data_record)
        keys = run.population.keys()
        state = run.steps.init(jax.vmap(lambda key: jax.random.fold_in(key, 0))(keys))
        train_keys = jax.vmap(lambda key: jax.random.fold_in(key, 1))(keys)
        best = empty_best(
            run.population.size, run.splits["test"].num_classes, [*run.names, "per_class_recall"]
        )
        checkpointer = (
            Checkpointer(str(workdir / "checkpoints")) if config.checkpoint_every_epochs else None
        )
        start_epoch, state, best, history, data_state = _restore(
            checkpointer, run, workdir, state=state, best=best, config_json=config_json
        )
        # Written once the checkpoints agree with the config, so a refused run changes nothing.
        _write_config(config_json, workdir)
        logger = logs.MetricLogger(workdir, history=history, tensorboard=config.tensorboard)
        # One stream for the run: each host reads its rows of every member's shuffle, from where the
        # checkpoint's pipeline state says.
        batches = data.train_batches(
            run.splits["train"],
            global_batch_size=config.batch_size,
            seed=[int(seed) for seed in run.population.seeds],
            start_step=data_state["step"],
            steps_per_item=steps_per_call(run.num_steps, config.steps_per_call),
            worker_count=config.data.worker_count,
        )
        try:
            for epoch in range(start_epoch, config.num_epochs):
                state, best = _run_epoch(
                    run,
                    state,
                    best,
                    epoch=epoch,
                    batches=batches,
                    keys=train_keys,
                    history=history,
                    logger=logger,
                    checkpointer=checkpointer,
                    config_json=config_json,
                )
        finally:
            batches.close()
            logger.close()
            if checkpointer is not None:
                checkpointer.close()
        summary = summarize(
            best,
            run.population,
            metric_names=run.names,
            selection=config.selection,
            selection_metric=config.selection_metric,
        )
        if jax.process_index() == 0:
            (workdir / "results.json").write_text(json.dumps(summary, indent=1))
        return {
            "summary": summary,
            "best": best,
            "history": history,
            "class_names": run.splits["train"].class_names,
            "train_class_counts": run.counts,
            "config": config,
        }


@dataclasses.dataclass(frozen=True)
class _Run:
    """A checked run: its resolved config, data and compiled steps, read from the config once."""

    config: ml_collections.ConfigDict
    splits: dict[str, data.Source]
    data_record: dict
    counts: np.ndarray
    population: Population
    num_steps: int
    steps: StepFunctions
    k: int
    names: list[str]


def _prepare(
    config: ml_collections.ConfigDict, workdir: epath.Path, splits: dict[str, data.Source] | None
) -> _Run:
    """Everything that can be wrong with the config, the data, the devices or the workdir fails
    here (:mod:`jaxloss.training.checks`), before anything is written or compiled."""
    try:
        # Every field present (jaxloss.training.defaults): from here on, read directly.
        config = defaults.resolve(config)
        checks.check_fields(config)
        checks.check_workdir(workdir)
        checks.check_layout(config)
        given = splits is not None
        splits = load_datasets(config.data, splits)
        data_record = data.provenance(config.data, splits, given=given)
        # Every process must run this config on this data (a collective; no-op on one process).
        distributed.check_same_config({**json.loads(config.to_json_best_effort()), **data_record})
        train = splits["train"]
        counts = data.class_counts(train)
        checks.check_data_fit(config, train, np.maximum(counts, 1))
        mesh = make_mesh(model_parallel=config.model_parallel)
        population = make_population(config)
        num_steps = data.steps_per_epoch(train.num_examples, config.batch_size, train=True)
        steps = make_steps(
            config,
            num_classes=train.num_classes,
            input_shape=train.feature_shape,
            # Classes emptied by a transform count as one, so that log-prior losses stay finite.
            class_counts=np.maximum(counts, 1),
            steps_per_epoch=num_steps,
            mesh=mesh,
            normalization=train.normalization,
        )
        k = min(config.top_k, train.num_classes)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ConfigError(f"Bad config: {error}") from error
    return _Run(
        config, splits, data_record, counts, population, num_steps, steps, k, metric_names(k)
    )


def _restore(checkpointer, run, workdir, *, state, best, config_json):
    """The newest intact checkpoint's epoch to start from, state, best, history and pipeline state
    (a damaged one is skipped and named in a warning), or a fresh start's."""
    restored = checkpointer and checkpointer.restore_latest(
        state=state, best=best, config=config_json
    )
    if not restored:
        return 0, state, best, [], {"step": 0}
    latest, state, best, saved_history, saved_data_state = restored
    history = [{key: _as_array(value) for key, value in record.items()} for record in saved_history]
    start_epoch = latest + 1
    # Checkpoints without a pipeline state (older ones) were taken at epoch ends.
    data_state = saved_data_state or {"step": start_epoch * run.num_steps}
    if start_epoch >= run.config.num_epochs and jax.process_index() == 0:
        logging.info("%s holds a finished run (%d epochs): nothing to train.", workdir, latest + 1)
    return start_epoch, state, best, history, data_state


def _run_epoch(
    run, state, best, *, epoch, batches, keys, history, logger, checkpointer, config_json
):
    """One epoch: train, stop on a non-finite loss, evaluate, select, log and checkpoint; appends
    the epoch's record to ``history`` and returns the state and the reported epochs."""
    config = run.config
    state, losses, accuracies = _train_epoch(run, state, batches, epoch=epoch, keys=keys)
    if config.stop_on_nan:
        _check_finite(
            losses,
            epoch=epoch,
            num_steps=run.num_steps,
            checkpoints=checkpointer and checkpointer.directory,
        )
    record = {
        "epoch": epoch,
        "train/loss": losses.mean(axis=0, dtype=np.float64),
        "train/accuracy": accuracies.mean(axis=0, dtype=np.float64),
    }
    values, bins = evaluate(
        run.steps, state, run.splits, batch_size=config.eval_batch_size, k=run.k
    )
    record.update(values)
    best = update_best(
        best, {**record, **bins}, config.selection_metric, last=config.selection == "last"
    )
    history.append(record)
    logger.write(record)
    # Process 0 reports; every process logs only what goes wrong.
    logging.log_if(
        logging.INFO,
        "epoch %d: train loss %.4f, validation accuracy %.4f, test accuracy %.4f "
        "(means over %d models)",
        jax.process_index() == 0,
        epoch,
        record["train/loss"].mean(),
        record["validation/accuracy"].mean(),
        record["test/accuracy"].mean(),
        run.population.size,
    )
    last = epoch == config.num_epochs - 1
    if checkpointer is not None and (last or (epoch + 1) % config.checkpoint_every_epochs == 0):
        checkpointer.save(
            epoch,
            state=state,
            best=best,
            history=[_jsonable(r) for r in history],
            config=config_json,
            data=batches.get_state(),
        )
    return state, best


def _jsonable(record: dict) -> dict:
    return {key: np.asarray(value).tolist() for key, value in record.items()}


def _as_array(value):
    return value if isinstance(value, int) else np.asarray(value, np.float64)
