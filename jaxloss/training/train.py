"""The compiled pieces of training: optimizer, state initialization, train and eval steps.

Every seed's training state is stacked along a leading axis of size ``num_seeds`` and the steps are
``jax.vmap``-ed over it, so N independent models train in one compiled step. The batch axis is
sharded over the ``'data'`` axis of a device mesh and the state is replicated: XLA inserts the
gradient all-reduce. Nothing here touches the host except through its return values.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxloss import data, metrics
from jaxloss.losses import _softmax, get_loss, loss_spec
from jaxloss.training.models import build_model

__all__ = [
    "METRICS",
    "Population",
    "StepFunctions",
    "higher_is_better",
    "metric_names",
    "make_mesh",
    "make_optimizer",
    "make_population",
    "make_steps",
    "metric_statistics",
    "metrics_from_statistics",
    "unstack_bins",
]

SCHEDULES = ("constant", "step", "cosine", "exponential")
OPTIMIZERS = ("sgd", "adam")


def make_mesh(devices: Any = None, *, model_parallel: int = 1) -> Mesh:
    """A ``('data', 'model')`` mesh over ``devices`` (default: all devices).

    The batch is split over ``'data'``; the heads' class axis (their weights, optimizer moments
    and the logits) over ``'model'``, of size ``model_parallel`` (1: every device holds every
    class). Consecutive devices share a batch shard, so a process's devices hold a contiguous
    block of ``'data'``.
    """
    devices = np.asarray(jax.devices() if devices is None else devices).ravel()
    if model_parallel < 1 or devices.size % model_parallel:
        raise ValueError(
            f"model_parallel={model_parallel} must be a positive divisor of the {devices.size} "
            "devices."
        )
    return Mesh(devices.reshape(-1, model_parallel), ("data", "model"))


def _learning_rate(
    config: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int, learning_rate: Any
):
    """An optax schedule of the global step, from an epoch-based description.

    ``learning_rate`` may be a traced scalar (one value per member of a population): every
    schedule here is optax's or ``jax.numpy`` of it, so member i equals a run configured with it.
    """
    lr = learning_rate
    name = config.schedule
    total = steps_per_epoch * num_epochs
    final = config.final_learning_rate
    if name == "constant":
        return lambda step: lr * jnp.ones_like(step, jnp.float32)
    if name == "step":
        # Like torch's MultiStepLR: the factor applies from the start of each boundary epoch.
        return lambda step: (
            lr
            * optax.piecewise_constant_schedule(
                1.0, {int(b) * steps_per_epoch: config.decay_factor for b in config.boundaries}
            )(step)
        )
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, total, alpha=final / lr)
    if name == "exponential":
        # Geometric per epoch, reaching final_learning_rate in the last epoch (EXACT's recipe).
        # Not optax.exponential_decay: it branches in Python on its decay rate, which depends on
        # a traced learning rate here.
        rate = (final / lr) ** (1.0 / max(num_epochs - 1, 1))
        return lambda step: lr * rate ** (step // steps_per_epoch)
    raise ValueError(f"Unknown schedule {name!r}. Available schedules: {', '.join(SCHEDULES)}.")


def _is_kernel(params: Any) -> Any:
    """Weight decay applies to weight matrices and conv kernels, not biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    config: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int,
    num_epochs: int,
    learning_rate: Any = None,
) -> optax.GradientTransformation:
    """The optax transformation an ``optimizer`` config describes.

    Args:
      config: ``name`` ("sgd" or "adam"), ``learning_rate``, ``momentum`` and ``nesterov`` (sgd),
        ``weight_decay`` (L2 added to the gradient of kernels, as torch's SGD does),
        ``schedule`` (one of :data:`SCHEDULES`) with ``boundaries`` (epochs) and ``decay_factor``
        (step) or ``final_learning_rate`` (cosine, exponential), ``gradient_clip_norm`` (or None)
        and ``gradient_normalizer`` (EXACT's running-norm normalizer instead of clipping).
      steps_per_epoch: optimizer steps in one epoch.
      num_epochs: epochs of the run.
      learning_rate: overrides ``config.learning_rate``; may be traced (a population member's).

    Returns:
      An ``optax.GradientTransformation``; its state's structure does not depend on the learning
      rate, so members with different rates share one state layout.
    """
    if learning_rate is None:
        learning_rate = config.learning_rate
    schedule = _learning_rate(config, steps_per_epoch, num_epochs, learning_rate)
    chain = []
    if config.gradient_normalizer:
        from jaxloss import optim

        chain.append(optim.gradient_normalizer())
    if config.gradient_clip_norm is not None:
        chain.append(optax.clip_by_global_norm(config.gradient_clip_norm))
    if config.weight_decay:
        chain.append(optax.add_decayed_weights(config.weight_decay, mask=_is_kernel))
    name = config.name
    if name == "sgd":
        chain.append(
            optax.sgd(
                schedule,
                momentum=config.momentum or None,
                nesterov=config.nesterov,
            )
        )
    elif name == "adam":
        chain.append(optax.adam(schedule))
    else:
        raise ValueError(
            f"Unknown optimizer {name!r}. Available optimizers: {', '.join(OPTIMIZERS)}."
        )
    return optax.chain(*chain)


# Every evaluation metric and whether higher is better: the one table
# that model selection, tuning, logs and reports read. ``{k}`` stands for the top-k cut-off.
METRICS = {
    "accuracy": True,
    "top{k}_accuracy": True,
    "balanced_accuracy": True,
    "macro_top{k}_accuracy": True,
    "ece": False,
    "nll": False,
}


def metric_names(k: int) -> list[str]:
    """The scalar metrics of an evaluation for a top-k cut-off of ``k``."""
    return [name.format(k=k) for name in METRICS]


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` (e.g. ``"top2_accuracy"``) is better."""
    pattern = re.sub(r"top\d+_", "top{k}_", name)
    if pattern not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; the metrics are {', '.join(METRICS)}.")
    return METRICS[pattern]


@dataclasses.dataclass(frozen=True)
class Population:
    """The models one run trains together: member ``m = p * num_seeds + s`` has seed ``seed + s``
    and the p-th value of every field of ``config.population``.

    Attributes:
      seeds: (M,) each member's seed (its initialization, data order and loss noise).
      values: name -> (M,) float32, each member's learning rate and loss hyperparameters.
    """

    seeds: np.ndarray
    values: dict[str, np.ndarray]

    @property
    def size(self) -> int:
        return len(self.seeds)

    def keys(self) -> jax.Array:
        """One key per member, ``key(seed)``: member m equals a run with its seed and values."""
        return jax.vmap(jax.random.key)(jnp.asarray(self.seeds))


def make_population(config: ml_collections.ConfigDict) -> Population:
    """The members of a run: ``config.num_seeds`` seeds for each configuration.

    ``config.population`` maps ``learning_rate`` or a continuous hyperparameter of the
    loss (``jaxloss.loss_spec(name).ranges``) to a tuple of values, one per configuration; every
    tuple has the same length P, and the run trains P x num_seeds models in one compiled step.

    Raises:
      ValueError: a field that cannot vary within one compiled step (a structural hyperparameter
        such as k, or the scale of a cosine head), or tuples of different lengths.
    """
    population = {k: tuple(np.ravel(v)) for k, v in config.population.items()}
    spec = loss_spec(config.loss.name)
    allowed = {"learning_rate", *spec.ranges} - {spec.logit_scale}
    unknown = sorted(set(population) - allowed)
    if unknown:
        raise ValueError(
            f"config.population.{unknown[0]}: only the learning rate and the continuous "
            f"hyperparameters of {spec.name!r} can vary within a run ({', '.join(sorted(allowed))})."
        )
    sizes = {name: len(values) for name, values in population.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"config.population fields need one value per configuration, got {sizes}.")
    num_configurations = next(iter(sizes.values()), 1)
    if num_configurations < 1 or config.num_seeds < 1:
        raise ValueError(
            f"A run needs at least one model: num_seeds={config.num_seeds}, "
            f"{num_configurations} configurations."
        )
    seeds = np.tile(np.arange(config.seed, config.seed + config.num_seeds), num_configurations)
    values = {
        name: np.repeat(np.asarray(v, np.float32), config.num_seeds)
        for name, v in population.items()
    }
    return Population(seeds, values)


# ECE bins of the evaluation (the seeds' protocol).
NUM_BINS = 15


def metric_statistics(
    logits: jax.Array, labels: jax.Array, where: jax.Array, *, num_classes: int, k: int
) -> dict[str, jax.Array]:
    """Sufficient statistics of every metric on one batch: sums, merged across batches, devices and
    hosts by adding, so that no host ever holds a split's logits.

    Args:
      logits: (N, C) scores.
      labels: (N,) integer labels.
      where: (N,) boolean mask of the examples that count (False: padding).
      num_classes: C.
      k: the top-k cut-off (clipped to C).

    Returns:
      ``count``, ``correct`` and ``topk`` per class (C,), ``nll`` (the summed cross-entropy) and
      ``bins`` (3, NUM_BINS): the calibration bins' counts, confidence sums and correct sums.
    """
    k = min(k, num_classes)
    weights = where.astype(jnp.float32)
    labels = jnp.where(where, labels, 0)  # padding rows may hold anything

    def per_class(values):
        return jax.ops.segment_sum(weights * values, labels, num_classes)

    predictions = jnp.argmax(logits, axis=-1)
    bins = metrics.calibration_bins(
        jax.nn.softmax(logits, axis=-1), labels, n_bins=NUM_BINS, where=where
    )
    return {
        "count": per_class(jnp.ones_like(weights)),
        "correct": per_class((predictions == labels).astype(jnp.float32)),
        "topk": per_class(metrics.topk_accuracy(logits, labels, k=k)),
        "nll": jnp.sum(weights * _softmax.cross_entropy(logits, labels)),
        "bins": jnp.stack([jnp.asarray(b, jnp.float32) for b in bins]),
    }


def unstack_bins(bins: Any) -> metrics.CalibrationBins:
    """``bins`` of :func:`metric_statistics` (..., 3, NUM_BINS) as :class:`CalibrationBins`."""
    bins = np.asarray(bins)
    return metrics.CalibrationBins(bins[..., 0, :], bins[..., 1, :], bins[..., 2, :])


def metrics_from_statistics(statistics: dict[str, Any], *, k: int) -> dict[str, np.ndarray]:
    """The metrics of :data:`METRICS` (and ``per_class_recall``) from summed statistics.

    Args:
      statistics: :func:`metric_statistics` summed over batches, with any leading axes (models).
      k: the top-k cut-off of the names (already clipped to the number of classes).

    Returns:
      Each metric with the statistics' leading axes; ``per_class_recall`` (..., C), NaN for a
      class without examples, which the balanced and macro metrics leave out (as sklearn).
    """
    s = {name: np.asarray(value, np.float64) for name, value in statistics.items()}
    count = s["count"]
    total = count.sum(axis=-1)
    present = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, s["correct"] / count, np.nan)
        topk_recall = np.where(present, s["topk"] / count, np.nan)
        return {
            "accuracy": s["correct"].sum(axis=-1) / total,
            f"top{k}_accuracy": s["topk"].sum(axis=-1) / total,
            "balanced_accuracy": np.nanmean(recall, axis=-1),
            f"macro_top{k}_accuracy": np.nanmean(topk_recall, axis=-1),
            "ece": np.asarray(metrics.ece_from_bins(unstack_bins(s["bins"]))),
            "nll": s["nll"] / total,
            "per_class_recall": recall,
        }


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """The compiled functions of one run.

    Attributes:
      init: ``init(keys) -> state``; keys (S,) from :meth:`Population.keys`; the state's leaves have a
        leading seed axis and are replicated over the mesh, but for the heads' class axes (and
        their optimizer moments), split over ``'model'``.
      train: ``train(state, batches, keys, member={}) -> (state, stats)``: G optimizer steps in one
        compiled loop; batches arrays (G, S, B, ...) sharded on B (a :func:`jaxloss.data.train_batches`
        item); ``member``: :attr:`Population.values`, each (S,); stats: ``loss`` and ``accuracy``
        of shape (G, S). The input state is donated.
      evaluate: ``evaluate(state, batch) -> statistics`` of every model on one shared batch
        (``features`` (B, ...), ``labels`` (B,), ``mask`` (B,)): :func:`metric_statistics` with a
        leading model axis, reduced over the devices (and hosts) inside the compiled call.
      predict: ``predict(state, features) -> logits`` (S, B, C), what every model's head emits.
      batch_sharding: placement of G training batches (G, S, B, ...).
      eval_sharding: placement of an evaluation batch (B, ...).
    """

    init: Callable
    train: Callable
    evaluate: Callable
    predict: Callable
    batch_sharding: NamedSharding
    eval_sharding: NamedSharding


def make_steps(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    class_counts: np.ndarray,
    steps_per_epoch: int,
    mesh: Mesh,
    normalization: data.Normalization | None = None,
) -> StepFunctions:
    """Builds the jitted init, train and eval functions of an experiment config.

    Args:
      config: the experiment config (``model``, ``loss``, ``optimizer``, ``num_epochs``,
        ``data.augment``).
      num_classes: C.
      input_shape: shape of one example.
      class_counts: training examples per class, for losses that use them.
      steps_per_epoch: optimizer steps per epoch (for schedules).
      mesh: the device mesh with a ``'data'`` axis.
      normalization: the features' device-side normalization (images travel as uint8); None
        casts them to float32 only.

    Returns:
      A :class:`StepFunctions`.
    """
    num_epochs = config.num_epochs
    tx = make_optimizer(config.optimizer, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
    spec = loss_spec(config.loss.name)
    # An unset (None) hyperparameter takes the loss's own default.
    loss_hyperparameters = {k: v for k, v in config.loss.hyperparameters.items() if v is not None}

    def build(rngs):
        # A cosine head's scale is part of the model's structure (its graphdef), not its state.
        return build_model(
            config.model,
            num_classes,
            input_shape,
            rngs,
            cosine_scale=spec.scale(loss_hyperparameters),
        )

    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))), nnx.Param, ...)
    # Fail on a bad loss name or hyperparameter now, not inside the first trace.
    get_loss(spec.name, class_counts=class_counts, **loss_hyperparameters)
    # Hyperparameters that follow a schedule of the step (EXACT's temperature).
    scheduled = (
        (lambda step: {})
        if spec.schedule is None
        else spec.schedule(
            num_epochs=num_epochs,
            steps_per_epoch=steps_per_epoch,
            **{**spec.schedule_defaults, **config.loss.schedule},
        )
    )
    augment = config.data.augment
    normalization = normalization or data.Normalization()

    def init_one(key):
        _, params, rest = nnx.split(build(nnx.Rngs(key)), nnx.Param, ...)
        return {"params": params, "rest": rest, "opt": tx.init(params), "step": jnp.int32(0)}

    def train_one(state, batch, key, member):
        step = state["step"]
        key = jax.random.fold_in(key, step)
        augment_key, loss_key = jax.random.split(key)
        features, labels = normalization(batch["features"]), batch["labels"]
        if augment:
            crop_key, flip_key = jax.random.split(augment_key)
            features = data.random_flip(flip_key, data.random_crop(crop_key, features, padding=4))
        member = dict(member)
        member_tx = tx
        if "learning_rate" in member:
            member_tx = make_optimizer(
                config.optimizer,
                steps_per_epoch=steps_per_epoch,
                num_epochs=num_epochs,
                learning_rate=member.pop("learning_rate"),
            )
        loss_fn = get_loss(
            spec.name,
            class_counts=class_counts,
            **{**loss_hyperparameters, **member, **scheduled(step)},
        )

        def objective(params):
            # Fresh Variables at this trace level: BatchNorm updates its statistics in place.
            model = nnx.merge(graphdef, params, state["rest"], copy=True)
            logits = model(features, train=True)
            loss = jnp.mean(loss_fn(logits, labels, key=loss_key))
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return loss, (rest, logits)

        (loss, (rest, logits)), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt_state = member_tx.update(grads, state["opt"], state["params"])
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "rest": rest,
            "opt": opt_state,
            "step": step + 1,
        }
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return new_state, {"loss": loss, "accuracy": accuracy}

    top_k = config.top_k

    def predict_one(state, features):
        model = nnx.merge(graphdef, state["params"], state["rest"])
        return model(normalization(features), train=False)

    def evaluate_one(state, batch):
        return metric_statistics(
            predict_one(state, batch["features"]),
            batch["labels"],
            batch["mask"],
            num_classes=num_classes,
            k=top_k,
        )

    def train_steps(state, batches, keys, member):
        # Several steps per call: the host dispatches, transfers and waits once per G steps.
        def step(state, batch):
            return jax.vmap(train_one)(state, batch, keys, member)

        return jax.lax.scan(step, state, batches)

    replicated = NamedSharding(mesh, P())
    # The state's placement, from the heads' class-axis annotations (replicated otherwise); the
    # leading population axis is never split. Optimizer moments carry their parameter's metadata.
    abstract_state = jax.eval_shape(jax.vmap(init_one), jax.random.split(jax.random.key(0), 1))
    state_sharding = jax.tree.map(
        lambda spec: NamedSharding(mesh, P(None, *spec) if spec else P()),
        nnx.get_partition_spec(abstract_state),
        is_leaf=lambda x: isinstance(x, P),
    )
    return StepFunctions(
        # Compiled with placed outputs: every process builds its part of the state on its devices
        # (an eager init would build it on the host and copy it, checking that every host's copy
        # is equal).
        init=jax.jit(jax.vmap(init_one), out_shardings=state_sharding),
        train=functools.partial(
            jax.jit(
                train_steps,
                donate_argnums=0,
                out_shardings=(state_sharding, replicated),
            ),
            member={},
        ),
        evaluate=jax.jit(jax.vmap(evaluate_one, in_axes=(0, None)), out_shardings=replicated),
        predict=jax.jit(jax.vmap(predict_one, in_axes=(0, None))),
        batch_sharding=NamedSharding(mesh, P(None, None, "data")),
        eval_sharding=NamedSharding(mesh, P("data")),
    )
