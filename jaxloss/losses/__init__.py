"""Classification losses. Each returns one value per example; reduce it yourself.

Conventions shared by every loss: ``fn(logits, labels, *, hyperparameters..., axis=-1, where=None)``;
integer labels of the logits' shape without the class axis; keyword-only hyperparameters checked at
trace time; randomness only through an explicit ``key`` (or injected noise); 16-bit inputs computed in
float32 and returned in their own dtype.
"""

from jaxloss.losses._confidence import confidence_penalty_loss, softmax_focal_loss
from jaxloss.losses._exact import exact_loss
from jaxloss.losses._label_relaxation import label_relaxation_loss
from jaxloss.losses._logit_adjustment import (
    balanced_softmax_loss,
    logit_adjust,
    logit_adjusted_loss,
)
from jaxloss.losses._noised_topk import (
    balanced_noised_topk_loss,
    imbalanced_noised_topk_loss,
    ldam_loss,
    ldam_margins,
)
from jaxloss.losses._poly import poly1_loss
from jaxloss.losses._registry import available_losses, get_loss, loss_spec
from jaxloss.losses._spec import LossSpec, Range
from jaxloss.losses._topk_svm import smooth_topk_svm_loss, topk_svm_loss

__all__ = [
    "smooth_topk_svm_loss",
    "topk_svm_loss",
    "LossSpec",
    "Range",
    "available_losses",
    "get_loss",
    "loss_spec",
    "balanced_softmax_loss",
    "confidence_penalty_loss",
    "exact_loss",
    "label_relaxation_loss",
    "logit_adjust",
    "logit_adjusted_loss",
    "poly1_loss",
    "softmax_focal_loss",
    "balanced_noised_topk_loss",
    "imbalanced_noised_topk_loss",
    "ldam_loss",
    "ldam_margins",
]
