"""jaxloss: classification losses beyond cross-entropy, for JAX and Flax."""

from jaxloss import losses as losses
from jaxloss import metrics as metrics
from jaxloss import nn as nn
from jaxloss import ops as ops
from jaxloss import optim as optim
from jaxloss._checked import checked as checked
from jaxloss.losses import *  # noqa: F403  (the losses are the package's face)

__version__ = "0.1.0"
