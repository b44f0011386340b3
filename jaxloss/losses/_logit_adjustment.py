"""Long-tailed classification by adding the log class prior to the logits (Balanced Softmax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _validation
from jaxloss._classes import ClassAxis
from jaxloss.losses import _docstrings, _softmax
from jaxloss.losses._spec import LossSpec, Range


def _log_prior(values, inputs: _validation.Prepared) -> jax.Array:
    """log π from positive class counts or priors: normalized, so that the scale never matters.

    Under ``class_axis_name`` ``values`` is the device's block: it has the local number of classes,
    and the normalizer sums every shard's.
    """
    counts = _validation.check_class_vector(
        "class_counts", values, inputs.logits.shape[-1], classes=inputs.classes
    )
    # Counts are logged in float32 or wider: fp16/bf16 would round them first (2775 -> 2776).
    counts = counts.astype(inputs.logits.dtype)
    return jnp.log(counts) - jnp.log(inputs.classes.sum(counts))


def _known_spread(class_counts, tau, classes: ClassAxis) -> float | None:
    """tau * log(max n / min n), the spread of the logit shift, when the counts and tau are
    concrete and whole; None otherwise (traced, or one device's block of split classes, whose
    spread is not the whole vector's)."""
    if classes.name is not None:
        return None
    try:
        counts = np.asarray(class_counts, np.float64)
        return float(tau) * float(np.log(counts.max() / counts.min()))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _adjusted_cross_entropy(logits, labels, *, class_counts, tau, axis, where, class_axis_name):
    _validation.check_in_range("tau", tau, lower=0.0, finite=True)
    inputs = _validation.prepare(
        logits, labels, axis=axis, where=where, class_axis_name=class_axis_name
    )
    ce = _softmax.cross_entropy(
        inputs.logits,
        inputs.labels,
        where=inputs.where,
        bias=tau * _log_prior(class_counts, inputs),
        bias_spread=_known_spread(class_counts, tau, inputs.classes),
        classes=inputs.classes,
    )
    return inputs.finish(ce)


@_docstrings.shared_args
def balanced_softmax_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    class_counts: jax.Array,
    axis: int | tuple[int, ...] = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Balanced Softmax: cross-entropy on logits shifted by the log training class counts.

    .. math::
      \ell(z, y) = -\log \frac{n_y e^{z_y}}{\sum_k n_k e^{z_k}}
                 = \mathrm{CE}(z + \log n, y).

    Training with it makes :math:`\mathrm{softmax}(z)` estimate the class-balanced posterior, so
    predict with the raw logits (``argmax z``), never with the shifted ones. The loss is invariant
    to rescaling the counts and equals the cross-entropy for equal counts. It is
    :func:`logit_adjusted_loss` with ``tau=1``.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      class_counts: training examples per class in label order, shape ``(num_classes,)`` (under
        ``class_axis_name``, the device's block of it); every count must be positive (a zero
        count would give an infinite loss).
      axis: (shared)
      where: (shared: softmax)
      class_axis_name: (shared)

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.zeros((2, 3))
      >>> counts = jnp.array([100.0, 10.0, 1.0])
      >>> loss = jaxloss.balanced_softmax_loss(logits, jnp.array([0, 2]), class_counts=counts)
      >>> print(loss.tolist())
      [0.1044, 4.7095]

    References:
      Ren et al., `Balanced Meta-Softmax for Long-Tailed Visual Recognition
      <https://arxiv.org/abs/2007.10740>`_, NeurIPS 2020.
    """
    return _adjusted_cross_entropy(
        logits,
        labels,
        class_counts=class_counts,
        tau=1.0,
        axis=axis,
        where=where,
        class_axis_name=class_axis_name,
    )


@_docstrings.shared_args
def logit_adjusted_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    class_counts: jax.Array,
    tau: float = 1.0,
    axis: int | tuple[int, ...] = -1,
    where: jax.Array | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Logit-adjusted cross-entropy: the training-time form of logit adjustment.

    .. math::
      \ell(z, y) = \mathrm{CE}(z + \tau \log \pi, y), \qquad \pi_k = n_k / \textstyle\sum_j n_j.

    :math:`\pi` are the training class priors, from the class counts :math:`n` (passing the priors
    themselves gives the same result: only the ratios matter). ``tau=1`` is
    :func:`balanced_softmax_loss`; ``tau=0`` is the cross-entropy.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      labels: integer labels in ``[0, num_classes)``, shape ``(...)``.
      class_counts: training examples per class, or the class priors (any positive vector: it
        is normalized), shape ``(num_classes,)`` (under ``class_axis_name``, the device's block
        of it).
      tau: strength of the adjustment, ``>= 0``.
      axis: (shared)
      where: (shared: softmax)
      class_axis_name: (shared)

    Returns:
      The loss per example, shape ``(...)``, in the logits' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> counts = jnp.array([200, 100, 100])
      >>> loss = jaxloss.logit_adjusted_loss(jnp.zeros((1, 3)), jnp.array([1]), class_counts=counts)
      >>> print(loss.tolist())
      [1.3863]

    References:
      Menon et al., `Long-tail learning via logit adjustment
      <https://arxiv.org/abs/2007.07314>`_, ICLR 2021.
    """
    return _adjusted_cross_entropy(
        logits,
        labels,
        class_counts=class_counts,
        tau=tau,
        axis=axis,
        where=where,
        class_axis_name=class_axis_name,
    )


@_docstrings.shared_args
def logit_adjust(
    logits: jax.Array,
    *,
    class_counts: jax.Array,
    tau: float = 1.0,
    axis: int = -1,
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""Post-hoc logit adjustment: subtract the scaled log prior from a trained model's logits.

    .. math::
      \tilde z = z - \tau \log \pi, \qquad \pi_k = n_k / \textstyle\sum_j n_j.

    Use it on a model trained with plain cross-entropy to predict the class-balanced argmax. Do not
    apply it to a model trained with :func:`balanced_softmax_loss` or :func:`logit_adjusted_loss`:
    they already compensate during training.

    Args:
      logits: unnormalized scores, shape ``(..., num_classes)`` (classes along ``axis``).
      class_counts: training examples per class, or the class priors (any positive vector: it
        is normalized, so both give the same result), shape ``(num_classes,)`` (under
        ``class_axis_name``, the device's block of it).
      tau: strength of the adjustment, ``>= 0``.
      axis: the class axis of ``logits`` (one axis: the output keeps the logits' layout).
      class_axis_name: (shared)

    Returns:
      The adjusted logits, same shape and dtype as ``logits``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxloss
      >>> adjusted = jaxloss.logit_adjust(jnp.zeros(3), class_counts=jnp.array([200, 100, 100]))
      >>> print(adjusted.tolist())
      [0.6931, 1.3863, 1.3863]

    References:
      Menon et al., `Long-tail learning via logit adjustment
      <https://arxiv.org/abs/2007.07314>`_, ICLR 2021.
    """
    _validation.check_in_range("tau", tau, lower=0.0, finite=True)
    inputs = _validation.prepare(
        logits, axis=axis, tuple_axis=False, class_axis_name=class_axis_name
    )
    shift = tau * _log_prior(class_counts, inputs)
    return jnp.moveaxis(inputs.logits - shift, -1, axis).astype(inputs.out_dtype)


SPECS = (
    LossSpec("balanced_softmax", balanced_softmax_loss, page="long_tail"),
    LossSpec(
        "logit_adjusted",
        logit_adjusted_loss,
        ranges={"tau": Range(0.25, 2.0, log=False)},
        tuned=("tau",),
        page="long_tail",
    ),
)
