"""Every check of a run's config, in one place: each runs before the run writes or compiles anything.

A mistake gives one line naming the field, the value and what is allowed. Each check takes a
config resolved against the defaults (:func:`jaxloss.training.defaults.resolve`): every field is
there. A population member's value goes through the very check its single value would
(:func:`learning_rate_problem`, the loss's own hyperparameter checks traced on a tiny batch), so the
two can never disagree.
"""

from __future__ import annotations

import collections
import difflib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from jaxloss import _validation, data
from jaxloss.losses import available_losses, get_loss, loss_spec
from jaxloss.training.evaluation import metric_names
from jaxloss.training.optimizer import OPTIMIZERS, SCHEDULES

__all__ = [
    "ConfigError",
    "check_data_fit",
    "check_fields",
    "check_layout",
    "check_workdir",
    "did_you_mean",
    "learning_rate_problem",
]

# jax.random.key takes a 32-bit seed; member i of a run uses seed + i.
_MAX_SEED = 2**31 - 1


class ConfigError(ValueError):
    """A config that cannot run (an unknown name, a value out of range, a field that does not fit
    the data or the devices); raised before the run writes anything.

    Example:
      >>> import os, tempfile
      >>> from jaxloss.training import defaults, train_and_evaluate
      >>> config, workdir = defaults.get_config(), os.path.join(tempfile.mkdtemp(), "run")
      >>> config.num_epochs = 0
      >>> train_and_evaluate(config, workdir)
      Traceback (most recent call last):
        ...
      jaxloss.training.checks.ConfigError: Bad config: num_epochs must be a positive integer, got 0.
      >>> os.path.exists(workdir)
      False
    """


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a mistyped ``name``; '' if none is close.

    Example:
      >>> did_you_mean("label_relax", ["label_relaxation", "focal"])
      " (did you mean 'label_relaxation'?)"
      >>> did_you_mean("adamw", ["sgd"])
      ''
    """
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _integer(problems: list[str], field: str, value: Any, *, lower: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lower:
        kind = {0: "a non-negative integer", 1: "a positive integer"}[lower]
        problems.append(f"{field} must be {kind}, got {value!r}")


def _boolean(problems: list[str], field: str, value: Any) -> None:
    if not isinstance(value, bool | np.bool_):
        problems.append(f"{field} must be True or False, got {value!r}")


def _choice(problems: list[str], field: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        problems.append(
            f"{field} must be one of {', '.join(choices)}, got {value!r}"
            + did_you_mean(str(value), choices)
        )


def _interval(problems: list[str], field: str, value: Any, **interval) -> None:
    """``_validation.check_in_range`` (the losses' own check), its message kept as a problem."""
    try:
        _validation.check_in_range(field, value, **interval)
    except (TypeError, ValueError) as error:
        problems.append(str(error).rstrip("."))


# Each field's domain. A numeric one is an interval of ``_validation.check_in_range`` (the check
# the losses run on their hyperparameters).
_POSITIVE = {"lower": 0.0, "lower_open": True, "finite": True}
_NON_NEGATIVE = {"lower": 0.0, "finite": True}
_INTERVALS = {
    "optimizer.learning_rate": _POSITIVE,
    "optimizer.momentum": {"lower": 0.0, "upper": 1.0, "upper_open": True},
    "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.decay_factor": _POSITIVE,
    "optimizer.final_learning_rate": _NON_NEGATIVE,
    "optimizer.gradient_clip_norm": _POSITIVE,  # None (the default) turns clipping off
    "data.imbalance_factor": {"lower": 1.0, "finite": True},
    "data.label_noise": {"lower": 0.0, "upper": 1.0},
}
# Integer fields and their least value.
_INTEGERS = {
    "seed": 0,
    "num_seeds": 1,
    "num_epochs": 1,
    "batch_size": 1,
    "eval_batch_size": 1,
    "steps_per_call": 1,
    "top_k": 1,
    "log_every_steps": 1,
    "checkpoint_every_epochs": 0,
    "model_parallel": 1,
    "data.split_seed": 0,
    "data.noise_block": 1,
    "data.worker_count": 0,
}
_BOOLEANS = (
    "progress_bar",
    "tensorboard",
    "stop_on_nan",
    "data.augment",
    "optimizer.nesterov",
    "optimizer.gradient_normalizer",
)
_CHOICES = {
    "selection": ("best", "last"),
    "loss.name": available_losses(),
    "optimizer.name": OPTIMIZERS,
    "optimizer.schedule": SCHEDULES,
}


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value of a dotted ``field``."""
    for name in field.split("."):
        config = config[name]
    return config


def learning_rate_problem(field: str, value: Any) -> str | None:
    """The problem with a learning rate (a single one or a population member's), or None.

    Example:
      >>> learning_rate_problem("population.learning_rate[1]", -0.1)
      'population.learning_rate[1] must be in (0.0, inf] and finite, got -0.1'
      >>> learning_rate_problem("optimizer.learning_rate", 0.1) is None
      True
    """
    problems: list[str] = []
    _interval(problems, field, value, **_INTERVALS["optimizer.learning_rate"])
    return problems[0] if problems else None


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Checks every field whose domain does not depend on the data or the devices.

    Raises:
      ConfigError: one line listing each field, its value and what is allowed.

    Example:
      >>> from jaxloss.training import defaults
      >>> config = defaults.get_config()
      >>> config.num_epochs, config.optimizer.name = 0, "adamm"
      >>> check_fields(config)
      Traceback (most recent call last):
        ...
      jaxloss.training.checks.ConfigError: num_epochs must be a positive integer, got 0; optimizer.name must be one of sgd, adam, got 'adamm' (did you mean 'adam'?).
    """
    problems: list[str] = []
    for field, lower in _INTEGERS.items():
        _integer(problems, field, _get(config, field), lower=lower)
    if not problems and config.seed + config.num_seeds - 1 > _MAX_SEED:
        problems.append(
            f"seed + num_seeds - 1 ({config.seed} + {config.num_seeds} - 1) must be at most "
            f"{_MAX_SEED}: the members' seeds are 32-bit"
        )
    for field in _BOOLEANS:
        _boolean(problems, field, _get(config, field))
    for field, choices in _CHOICES.items():
        _choice(problems, field, _get(config, field), choices)
    for field, interval in _INTERVALS.items():
        _interval(problems, field, _get(config, field), **interval)
    for i, boundary in enumerate(config.optimizer.boundaries):
        _integer(problems, f"optimizer.boundaries[{i}]", boundary, lower=0)
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def check_layout(
    config: ml_collections.ConfigDict, devices_per_process: Sequence[int] | None = None
) -> None:
    """Checks ``model_parallel``, ``batch_size`` and ``eval_batch_size`` against the devices.

    Each process feeds its own rows of a batch, so its devices must hold whole groups of the class
    axis (``model_parallel`` divides its device count) and every process the same number of them.

    Args:
      config: a config that passed :func:`check_fields`.
      devices_per_process: each process's device count (default: this run's, from
        ``jax.devices()``).

    Raises:
      ConfigError: a field that does not fit the devices, named with the layout.

    Example:
      >>> from jaxloss.training import defaults
      >>> config = defaults.get_config()
      >>> config.batch_size = 6
      >>> check_layout(config, devices_per_process=[2])
      >>> check_layout(config, devices_per_process=[4])
      Traceback (most recent call last):
        ...
      jaxloss.training.checks.ConfigError: batch_size (6) must be a multiple of the 4 data-parallel device groups (model_parallel=1).
    """
    if devices_per_process is None:
        counts = collections.Counter(device.process_index for device in jax.devices())
        devices_per_process = [counts[p] for p in sorted(counts)]
    num_processes, num_devices = len(devices_per_process), sum(devices_per_process)
    layout = (
        f" ({num_processes} processes x {devices_per_process[0]} devices)"
        if num_processes > 1
        else ""
    )
    model_parallel = config.model_parallel
    if len(set(devices_per_process)) > 1:
        raise ConfigError(
            f"every process needs the same number of devices, got {list(devices_per_process)}."
        )
    if devices_per_process[0] % model_parallel:
        where = "each process's" if num_processes > 1 else "the"
        raise ConfigError(
            f"model_parallel ({model_parallel}) must divide {where} {devices_per_process[0]} "
            f"devices{layout}: the classes are split over the devices of one process."
        )
    groups = num_devices // model_parallel
    problems = [
        f"{field} ({config[field]}) must be a multiple of the {groups} data-parallel device "
        f"groups{layout} (model_parallel={model_parallel})"
        for field in ("batch_size", "eval_batch_size")
        if config[field] % groups
    ]
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def _loss_problem(spec, hyperparameters: dict, *, num_classes: int, class_counts) -> str | None:
    """The loss's own error for these hyperparameters, from tracing it on a 2-example batch (its
    checks of concrete values run at trace time; nothing compiles)."""
    try:
        fn = get_loss(spec.name, class_counts=class_counts, **hyperparameters)
        jax.eval_shape(
            lambda logits, labels: fn(logits, labels, key=jax.random.key(0)),
            jax.ShapeDtypeStruct((2, num_classes), jnp.float32),
            jax.ShapeDtypeStruct((2,), jnp.int32),
        )
    except (TypeError, ValueError) as error:
        return str(error).rstrip(".")
    return None


def _named(message: str, name: str, field: str) -> str:
    """``message`` of the loss about hyperparameter ``name``, said about the config's ``field``."""
    if message.startswith(name + " "):
        return field + message[len(name) :]
    return f"{field}: {message}"


def check_data_fit(
    config: ml_collections.ConfigDict, train: data.Source, class_counts: np.ndarray
) -> None:
    """Checks the fields that depend on the training data: the batch size, ``top_k`` and the
    selection metric, the loss's hyperparameters and every population member's values.

    Args:
      config: a config that passed :func:`check_fields`.
      train: the training split.
      class_counts: its examples per class, as the losses receive them.

    Raises:
      ConfigError: one line listing each field that does not fit the data.

    Example:
      >>> from jaxloss.training import defaults
      >>> config, train = defaults.get_config(), data.load_source("iris", split="train")
      >>> config.batch_size = 200
      >>> check_data_fit(config, train, np.bincount(train.labels))
      Traceback (most recent call last):
        ...
      jaxloss.training.checks.ConfigError: batch_size (200) is larger than the training split (90 examples of iris/train): no full batch to train on.
    """
    problems: list[str] = []
    if config.batch_size > train.num_examples:
        problems.append(
            f"batch_size ({config.batch_size}) is larger than the training split "
            f"({train.num_examples} examples of {train.name}): no full batch to train on"
        )
    names = metric_names(min(config.top_k, train.num_classes))
    if config.selection_metric not in names:
        problems.append(
            f"selection_metric {config.selection_metric!r} is not a metric; choose one of "
            f"{', '.join(names)}"
        )
    spec = loss_spec(config.loss.name)
    # An unset (None) hyperparameter takes the loss's own default.
    hyperparameters = {k: v for k, v in config.loss.hyperparameters.items() if v is not None}
    k = hyperparameters.get("k")
    if isinstance(k, int) and not 1 <= k < train.num_classes:
        problems.append(
            f"loss.hyperparameters.k must be in [1, {train.num_classes - 1}] for the "
            f"{train.num_classes} classes of {train.name}, got {k}"
        )

    def problem(**values) -> str | None:
        """The loss's error for the config's hyperparameters with ``values`` over them."""
        return _loss_problem(
            spec,
            {**hyperparameters, **values},
            num_classes=train.num_classes,
            class_counts=class_counts,
        )

    single = None if problems else problem()
    if single is not None:
        name = single.split(" ", 1)[0]
        problems.append(
            _named(single, name, f"loss.hyperparameters.{name}")
            if name in spec.signature_defaults()
            else f"loss: {single}"
        )
    if not problems:
        for name, values in config.population.items():
            for i, value in enumerate(np.ravel(values).tolist()):
                field = f"population.{name}[{i}]"
                if name == "learning_rate":
                    member = learning_rate_problem(field, value)
                elif name in spec.ranges:
                    member = problem(**{name: value})
                    member = member and _named(member, name, field)
                else:
                    member = None  # make_population names the fields that cannot vary
                if member:
                    problems.append(member)
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def check_workdir(workdir: epath.Path) -> None:
    """Checks that ``workdir`` is (or can become) a directory: not a file, not under one.

    Raises:
      ConfigError: ``workdir`` or one of its parents is a file.

    Example:
      >>> import tempfile
      >>> file = epath.Path(tempfile.mkdtemp()) / "notes.txt"
      >>> _ = file.write_text("")
      >>> check_workdir(file.parent / "run")
      >>> check_workdir(file / "run")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      jaxloss.training.checks.ConfigError: workdir .../notes.txt/run is under .../notes.txt, which is a file.
    """
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} is a file, not a directory.")
    for parent in workdir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"workdir {workdir} is under {parent}, which is a file.")
            break
