"""Every field of an experiment config with its default: the one place defaults live.

``train_and_evaluate`` merges the config it is given over :func:`get_config` (:func:`resolve`), so the
training package reads every field directly, and a field that no run reads (a typo from Python,
where the command line's checks do not reach) is refused naming the closest one. The configs in
``experiments/configs`` start from these values (``digits.py`` is them with a loss) and change what
differs.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxloss.training.checks import ConfigError, did_you_mean

__all__ = ["OPEN_FIELDS", "get_config", "resolve"]

# Fields whose keys the config chooses (a loss's hyperparameters, a dataset's arguments, the
# values a population varies): they are taken whole, not merged key by key.
OPEN_FIELDS = frozenset({"population", "loss.hyperparameters", "loss.schedule", "data.options"})


def get_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default: a small MLP on scikit-learn's 8x8 digits with
    cross-entropy, 3 seeds, in seconds on a CPU.

    Example:
      >>> config = get_config()
      >>> config.data.name, config.model.name, config.loss.name, config.num_seeds
      ('digits', 'mlp', 'cross_entropy', 3)
    """
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_seeds = 3
    config.num_epochs = 25
    config.batch_size = 64
    config.eval_batch_size = 512
    # Metric on the VALIDATION split that picks each model's best epoch (and, in the comparison,
    # its hyperparameters); selection="last" reports the last epoch instead (a fixed budget).
    config.selection_metric = "accuracy"
    config.selection = "best"
    config.top_k = 5
    config.checkpoint_every_epochs = 1  # 0: no checkpoints (and no resume)
    config.progress_bar = True
    config.tensorboard = True  # TensorBoard events in workdir/tensorboard
    config.stop_on_nan = True  # False: a diverged model keeps NaN metrics, the others go on
    config.log_every_steps = 10
    # Optimizer steps per compiled call (the largest divisor of an epoch's steps up to this):
    # one host round trip per call instead of per step.
    config.steps_per_call = 32
    config.model_parallel = 1  # devices the classes are split over (heads, logits); the rest: batch
    # Per-member values of the learning rate and the loss's continuous hyperparameters, e.g.
    # {"learning_rate": (0.01, 0.1)}: P configurations x num_seeds models in one compiled step.
    config.population = ml_collections.ConfigDict()

    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"  # a registered dataset or the path of your own data
    config.data.split_seed = 0  # train/validation/test split, long-tail and noise draws
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds datasets only
    config.data.imbalance_factor = 1.0  # > 1: long-tailed train split
    config.data.imbalance_kind = "exp"
    config.data.label_noise = 0.0  # > 0: smooth top-k label noise on the train split
    config.data.noise_block = 5
    config.data.augment = False  # random crop (pad 4) + horizontal flip
    config.data.worker_count = 0  # input worker processes per host (0: read in this process)
    config.data.options = ml_collections.ConfigDict()  # a synthetic dataset's arguments

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"
    config.model.hidden_sizes = (256, 256)
    config.model.depth = 20  # resnet / wide_resnet
    config.model.width = 8  # wide_resnet
    config.model.head = "linear"  # linear | cosine (set from the loss's spec)
    config.model.zero_logit = False

    config.loss = ml_collections.ConfigDict()
    config.loss.name = "cross_entropy"
    config.loss.hyperparameters = ml_collections.ConfigDict()  # unset ones: the spec's defaults
    config.loss.schedule = ml_collections.ConfigDict()  # the spec's schedule parameters

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "cosine"
    config.optimizer.boundaries = ()  # step schedule: epochs where the rate is multiplied
    config.optimizer.decay_factor = 0.1
    config.optimizer.final_learning_rate = 1e-4  # cosine and exponential schedules
    config.optimizer.gradient_clip_norm = ml_collections.config_dict.placeholder(float)
    config.optimizer.gradient_normalizer = False  # EXACT's normalizer
    return config


def _merge(into: ml_collections.ConfigDict, config: Any, prefix: str) -> None:
    for key, value in config.items():
        path = prefix + key
        if key not in into:
            fields = ", ".join(sorted(into.keys()))
            raise ConfigError(
                f"{path}: no such config field{did_you_mean(key, list(into.keys()))}; the fields "
                f"{'of ' + prefix[:-1] if prefix else 'of a config'}: {fields}."
            )
        if (
            isinstance(into[key], ml_collections.ConfigDict)
            and isinstance(value, ml_collections.ConfigDict | dict)
            and path not in OPEN_FIELDS
        ):
            _merge(into[key], value, path + ".")
            continue
        try:
            into[key] = value
        except TypeError as error:
            raise ConfigError(f"{path}: {error}") from error


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` merged over :func:`get_config`: every field present, the given values kept.

    Raises:
      ConfigError: a field that :func:`get_config` does not have (with the closest one), or a
        value of another type than the field's.

    Example:
      >>> config = resolve(ml_collections.ConfigDict({"num_epochs": 3}))
      >>> config.num_epochs, config.batch_size
      (3, 64)
    """
    resolved = get_config()
    _merge(resolved, config, "")
    return resolved
