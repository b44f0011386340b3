"""Differentiable operators the losses are built on, each with its own custom VJP."""

from jaxloss.ops._esf import log_esf as log_esf
from jaxloss.ops._noised_topk import noised_topk as noised_topk
from jaxloss.ops._orthant import gaussian_orthant_probability as gaussian_orthant_probability
