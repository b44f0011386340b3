"""Classification losses. Each returns one value per example; reduce it yourself.

Conventions shared by every loss: ``fn(logits, labels, *, hyperparameters..., axis=-1, where=None)``;
integer labels of the logits' shape without the class axis; keyword-only hyperparameters checked at
trace time; randomness only through an explicit ``key`` (or injected noise); 16-bit inputs computed in
float32 and returned in their own dtype.
"""

from jaxloss.losses._logit_adjustment import logit_adjust
from jaxloss.losses._noised_topk import ldam_margins
from jaxloss.losses._registry import available_losses, get_loss, loss_spec
from jaxloss.losses._spec import LossSpec, Range

# Every registered loss under its function's name, read from the specs: a new loss module is
# exported without a line here.
_LOSSES = {loss_spec(name).fn.__name__: loss_spec(name).fn for name in available_losses()}
globals().update(_LOSSES)

__all__ = [
    *_LOSSES,
    "LossSpec",
    "Range",
    "available_losses",
    "get_loss",
    "loss_spec",
    "logit_adjust",
    "ldam_margins",
]
