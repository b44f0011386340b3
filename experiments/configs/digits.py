"""Default config: a small MLP on scikit-learn's 8x8 digits, 3 seeds, in seconds on a CPU.

    python experiments/main.py --config experiments/configs/digits.py:label_relaxation \
        --workdir /tmp/digits --config.loss.hyperparameters.alpha=0.2

The text after ``:`` names the loss (default ``cross_entropy``); its hyperparameters start from its
spec's defaults (``jaxloss.loss_spec(name).hyperparameters()``, the papers' values) and can be
overridden one by one. Its other fields are the defaults of every field
(``jaxloss.training.defaults.get_config()``); every other config starts from this one and changes
what differs. The MLP is 256-256 to stay fast; the label
relaxation paper's MNIST model (``simple_dense``) is ``model.hidden_sizes=(1024, 1024)``.
"""

import ml_collections

import jaxloss
from jaxloss.training import defaults


def set_loss(config: ml_collections.ConfigDict, loss: str) -> None:
    """Sets the loss and what its spec (``jaxloss.loss_spec(loss)``) says it needs.

    Its hyperparameters start from the papers' defaults; hyperparameters without a default that
    have a tuning range (EXACT's margin) are placeholders, so the command line can set them. Its
    schedule's parameters, the head it is designed for and its optimizer recipe come along.
    """
    spec = jaxloss.loss_spec(loss)
    hyperparameters = spec.hyperparameters()
    for name in spec.ranges:
        hyperparameters.setdefault(name, ml_collections.config_dict.placeholder(float))
    config.loss.name = loss
    config.loss.hyperparameters = ml_collections.ConfigDict(hyperparameters)
    config.loss.schedule = ml_collections.ConfigDict(dict(spec.schedule_defaults))
    config.model.head = spec.head
    config.optimizer.update(spec.optimizer)


def get_config(loss: str = "cross_entropy") -> ml_collections.ConfigDict:
    """The digits config with ``loss``; see the module docstring for the command line."""
    # Every field and its default live in one place; this config is them with a loss.
    config = defaults.get_config()
    set_loss(config, loss)  # last: it sets fields of the model and the optimizer
    return config
