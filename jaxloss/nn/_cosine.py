"""A classifier head whose scores are cosines, the input the margin losses are designed for."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["CosineClassifier"]


def _unit(x: jax.Array, axis: int) -> jax.Array:
    # The zero vector has no direction: it maps to 0 with a zero gradient. The inner where keeps
    # rsqrt (and its cubed derivative) away from 0, which would give inf * 0 = NaN.
    squared = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    positive = squared > 0
    return x * jnp.where(positive, jax.lax.rsqrt(jnp.where(positive, squared, 1.0)), 0.0)


class CosineClassifier(nnx.Module):
    r"""A linear head on normalized features with normalized class weights: cosine scores.

    .. math::
      s_c(x) = \frac{x^\top w_c}{\lVert x \rVert\, \lVert w_c \rVert} \in [-1, 1]

    There is no bias and no scale: the losses made for such heads
    (:func:`jaxloss.imbalanced_noised_topk_loss`, :func:`jaxloss.ldam_loss`) apply their own
    ``scale``. For a plain softmax cross-entropy multiply the scores by a scale (e.g. 30) first,
    since a softmax over values in [-1, 1] is nearly uniform.

    Args:
      in_features: size of the feature axis (the last axis of the input).
      num_classes: number of classes.
      rngs: NNX random streams; ``rngs.params()`` initializes the weights.
      param_dtype: dtype of the weight matrix.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxloss.nn import CosineClassifier
      >>> head = CosineClassifier(4, 3, rngs=nnx.Rngs(0))
      >>> scores = head(jnp.ones((2, 4)))
      >>> print(scores.shape, bool(jnp.all(jnp.abs(scores) <= 1.0)))
      (2, 3) True

    References:
      Wang et al., `NormFace: L2 Hypersphere Embedding for Face Verification
      <https://arxiv.org/abs/1704.06369>`_, 2017; Cao et al., `Learning Imbalanced Datasets with
      Label-Distribution-Aware Margin Loss <https://arxiv.org/abs/1906.07413>`_, NeurIPS 2019.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        weight = jax.random.uniform(
            rngs.params(), (in_features, num_classes), param_dtype, minval=-1.0, maxval=1.0
        )
        # Unit columns at the start, as in the reference: the gradient through the
        # normalization scales like 1 / ||w_c||.
        self.kernel = nnx.Param(_unit(weight, axis=0))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Cosine scores of shape ``x.shape[:-1] + (num_classes,)``."""
        kernel = self.kernel[...]
        x = jnp.asarray(x).astype(jnp.result_type(x, kernel))
        return _unit(x, axis=-1) @ _unit(kernel.astype(x.dtype), axis=0)
