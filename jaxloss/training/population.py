"""The population of a run: the models it trains together in one compiled step (seeds x
configurations of the learning rate and the loss's continuous hyperparameters)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxloss.losses import loss_spec

__all__ = ["Population", "make_population"]


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

    Example:
      >>> from jaxloss.training import defaults
      >>> config = defaults.get_config()
      >>> config.num_seeds, config.population = 2, {"learning_rate": (0.1, 0.01)}
      >>> population = make_population(config)
      >>> population.seeds.tolist()
      [0, 1, 0, 1]
      >>> population.values["learning_rate"]
      array([0.1 , 0.1 , 0.01, 0.01], dtype=float32)
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
