"""Training: NNX models, compiled multi-seed data-parallel steps, checkpoints, logs, the run loop,
and the experiment configs by name or path (:func:`load_config`).

Import it explicitly (``import jaxloss.training``); ``import jaxloss`` does not load it.
"""

from jaxloss.training.checkpoint import CheckpointError as CheckpointError
from jaxloss.training.checks import ConfigError as ConfigError
from jaxloss.training.configs import available_configs as available_configs
from jaxloss.training.configs import load_config as load_config
from jaxloss.training.loop import load_datasets as load_datasets
from jaxloss.training.loop import train_and_evaluate as train_and_evaluate
from jaxloss.training.models import build_model as build_model
