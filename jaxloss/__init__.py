"""jaxloss: classification losses beyond cross-entropy, for JAX and Flax."""

from jaxloss import losses, metrics, ops
from jaxloss._checked import checked
from jaxloss.losses import *  # noqa: F403  (the losses are the package's face)

__version__ = "0.1.0"
