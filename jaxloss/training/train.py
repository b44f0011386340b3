"""The compiled steps of a run: state initialization, the train step, evaluation and prediction.

Every member's training state is stacked along a leading axis of size ``M`` (the population) and
the steps are ``jax.vmap``-ed over it, so M independent models train in one compiled step. The
batch axis is sharded over the ``'data'`` axis of the device mesh; the state is replicated over
it, except the heads' class axes (their weights, optimizer moments), which are split over
``'model'`` (:func:`jaxloss.training.mesh.make_mesh`). XLA inserts the gradient all-reduce.
Nothing here touches the host except through its return values.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxloss import data
from jaxloss._validation import traced_values_checked
from jaxloss.losses import LossSpec, get_loss, loss_spec
from jaxloss.training.evaluation import metric_statistics
from jaxloss.training.models import build_model
from jaxloss.training.optimizer import make_optimizer

__all__ = ["StepFunctions", "make_steps"]


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """The compiled functions of one run.

    Attributes:
      init: ``init(keys) -> state``; keys (S,) from
        :meth:`~jaxloss.training.population.Population.keys`; the state's leaves have a leading
        seed axis and are replicated over the mesh, but for the heads' class axes (and their
        optimizer moments), split over ``'model'``.
      train: ``train(state, batches, keys, member={}) -> (state, stats)``: G optimizer steps in one
        compiled loop; batches arrays (G, S, B, ...) sharded on B (a
        :func:`jaxloss.data.train_batches` item); ``member``:
        :attr:`~jaxloss.training.population.Population.values`, each (S,); stats: ``loss`` and
        ``accuracy`` of shape (G, S). The input state is donated.
      evaluate: ``evaluate(state, batch) -> statistics`` of every model on one shared batch
        (``features`` (B, ...), ``labels`` (B,), ``mask`` (B,)):
        :func:`~jaxloss.training.evaluation.metric_statistics` with a leading model axis, reduced
        over the devices (and hosts) inside the compiled call.
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
        ``data.augment``, ``top_k``).
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
    tx = make_optimizer(
        config.optimizer, steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs
    )
    spec = loss_spec(config.loss.name)
    # An unset (None) hyperparameter takes the loss's own default.
    loss_hyperparameters = {k: v for k, v in config.loss.hyperparameters.items() if v is not None}
    # A cosine head's scale is part of the model's structure (its graphdef), not its state.
    build = functools.partial(
        build_model,
        config.model,
        num_classes,
        input_shape,
        cosine_scale=spec.scale(loss_hyperparameters),
    )
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))), nnx.Param, ...)
    # Fail on a bad loss name or hyperparameter now, not inside the first trace.
    get_loss(spec.name, class_counts=class_counts, **loss_hyperparameters)
    normalization = normalization or data.Normalization()
    top_k = config.top_k

    def init_one(key):
        _, params, rest = nnx.split(build(nnx.Rngs(key)), nnx.Param, ...)
        return {"params": params, "rest": rest, "opt": tx.init(params), "step": jnp.int32(0)}

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

    train_one = _train_step(
        config,
        spec=spec,
        loss_hyperparameters=loss_hyperparameters,
        graphdef=graphdef,
        tx=tx,
        class_counts=class_counts,
        steps_per_epoch=steps_per_epoch,
        normalization=normalization,
    )
    return _compile(mesh, init_one, train_one, evaluate_one, predict_one)


def _train_step(
    config: ml_collections.ConfigDict,
    *,
    spec: LossSpec,
    loss_hyperparameters: dict,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    class_counts: np.ndarray,
    steps_per_epoch: int,
    normalization: data.Normalization,
) -> Callable:
    """One member's optimizer step, ``train_one(state, batch, key, member) -> (state, stats)``:
    augmentation, the loss (its scheduled hyperparameters at this step, the member's own values)
    and the update (with the member's learning rate, if it has one)."""
    num_epochs = config.num_epochs
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

    return train_one


def _compile(mesh: Mesh, init_one, train_one, evaluate_one, predict_one) -> StepFunctions:
    """The per-member functions vmapped over the population, jitted with their placements."""

    def train_steps(state, batches, keys, member):
        # Several steps per call: the host dispatches, transfers and waits once per G steps.
        def step(state, batch):
            return jax.vmap(train_one)(state, batch, keys, member)

        # The members' values were checked on the host before anything was compiled (checks.py),
        # so the step carries no runtime checks: equal steps then compile to equal programs.
        with traced_values_checked():
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
