"""The one place that checks inputs and raises clear errors.

Every check here runs at trace time: it looks only at shapes, dtypes and Python values, so it costs
nothing inside a compiled function. Values that are only known at run time (labels out of range, NaN
logits) cannot be checked here; ``jaxloss.checked`` does that with ``jax.experimental.checkify``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxloss import _classes

__all__ = [
    "Prepared",
    "check_class_vector",
    "check_example_mask",
    "check_in_range",
    "check_integer",
    "check_predictions",
    "compute_dtype",
    "prepare",
    "traced_values_checked",
]


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype a loss computes in: float32 for 16-bit inputs, the input dtype otherwise."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


def _is_concrete(value: Any) -> bool:
    return not isinstance(value, jax.core.Tracer)


# False while tracing code whose traced hyperparameters were checked before (see
# traced_values_checked).
_TRACED_CHECKS = contextvars.ContextVar("jaxloss_traced_checks", default=True)


@contextlib.contextmanager
def traced_values_checked() -> Iterator[None]:
    """Traces without the ``checkify.debug_check`` of traced hyperparameters.

    For callers that checked every value before tracing (the training harness checks each
    population member on the host). Each debug check carries checkify's process-wide error id, so
    two traces of the same step would otherwise differ and never share a compiled program.
    """
    token = _TRACED_CHECKS.set(False)
    try:
        yield
    finally:
        _TRACED_CHECKS.reset(token)


def check_in_range(
    name: str,
    value: Any,
    *,
    lower: float | None = None,
    upper: float | None = None,
    lower_open: bool = False,
    upper_open: bool = False,
    finite: bool = False,
) -> None:
    """Raises ValueError unless ``value`` lies in the given interval.

    Concrete values are checked now, at trace time. Traced values (a hyperparameter passed as a
    ``jit`` argument or ``vmap``-ed over a population) have no value yet: they get a
    ``checkify.debug_check``, a no-op in plain code that :func:`jaxloss.checked` turns into an error.
    """
    if value is None:
        return
    left = "(" if lower_open else "["
    right = ")" if upper_open else "]"
    interval = (
        f"{left}{'-inf' if lower is None else lower}, {'inf' if upper is None else upper}{right}"
    )
    if finite:
        interval = f"{interval} and finite"
    if not _is_concrete(value):
        if not _TRACED_CHECKS.get():
            return
        traced = jnp.asarray(value)
        ok = jnp.isfinite(traced) if finite else ~jnp.isnan(traced)
        if lower is not None:
            ok &= traced > lower if lower_open else traced >= lower
        if upper is not None:
            ok &= traced < upper if upper_open else traced <= upper
        checkify.debug_check(
            jnp.all(ok), f"{name} must be in {interval}, got {{value}}", value=traced
        )
        return
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}.")
    ok = np.isfinite(array) if finite else ~np.isnan(array)
    if lower is not None:
        ok &= array > lower if lower_open else array >= lower
    if upper is not None:
        ok &= array < upper if upper_open else array <= upper
    if not np.all(ok):
        shown = value if array.ndim == 0 else array[~ok].tolist()
        raise ValueError(f"{name} must be in {interval}, got {shown}.")


def check_integer(name: str, value: Any, *, lower: int | None = None, upper: int | None = None):
    """Raises unless ``value`` is a Python (or NumPy) integer in [lower, upper]; returns it as int."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"{name} must be a Python int, got {value!r} of type {type(value).__name__}."
        )
    check_in_range(name, value, lower=lower, upper=upper)
    return int(value)


def check_class_vector(
    name: str,
    values: Any,
    num_classes: int,
    *,
    positive: bool = True,
    classes: _classes.ClassAxis = _classes.WHOLE,
) -> jax.Array:
    """Checks a per-class vector (counts, priors, weights) and returns it as a float array.

    Its shape must be ``(num_classes,)``, the classes of the logits this device holds: with
    ``classes`` split over a ``shard_map`` axis, the device's block of the vector, which must then
    vary over that axis where the types say so (``check_vma``). Every entry must be finite, and
    with ``positive`` > 0, otherwise >= 0 (checked now when the values are concrete, by
    :func:`jaxloss.checked` when traced).
    """
    if values is None:
        raise ValueError(f"{name} is required: a vector of {num_classes} per-class values.")
    shape = np.shape(values)
    shards = classes.shards
    if shape != (num_classes,):
        if shards > 1:
            whole = shape == (num_classes * shards,)
            raise ValueError(
                f"{name} must be this device's block of the per-class vector under "
                f"class_axis_name={classes.name!r}: shape ({num_classes},) for the {num_classes} "
                f"classes of its logits, got shape {shape}"
                + (f", the whole vector of {num_classes * shards} classes" if whole else "")
                + f". Split it like the logits' class axis (in_specs P({classes.name!r}))."
            )
        raise ValueError(
            f"{name} must have shape ({num_classes},) to match the {num_classes} classes of the "
            f"logits, got shape {shape}."
        )
    if shards > 1 and _varies(values, classes.name) is False:
        raise ValueError(
            f"{name} must be this device's block of the per-class vector under "
            f"class_axis_name={classes.name!r}, but it does not vary over mesh axis "
            f"{classes.name!r}: every device holds the same {num_classes} values. Split the whole "
            f"vector like the logits' class axis (in_specs P({classes.name!r}))."
        )
    check_in_range(name, values, lower=0, lower_open=positive, finite=True)
    return jnp.asarray(values)


def check_example_mask(where: Any, shape: tuple[int, ...]) -> jax.Array | None:
    """Checks an optional per-example boolean mask and broadcasts it to ``shape`` (the labels' shape).

    False marks examples that take no part (e.g. the padding of a last evaluation batch).
    """
    if where is None:
        return None
    if not hasattr(where, "dtype"):
        where = np.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"where must be a boolean per-example mask, got dtype {where.dtype}.")
    try:
        return jnp.broadcast_to(jnp.asarray(where), shape)
    except ValueError as error:
        raise ValueError(
            f"where of shape {tuple(np.shape(where))} does not broadcast to the labels' shape "
            f"{tuple(shape)}."
        ) from error


def check_predictions(predictions: Any, labels: Any) -> tuple[jax.Array, jax.Array]:
    """Checks integer class predictions and labels of one shape; returns both as arrays."""
    arrays = []
    for name, value in (("predictions", predictions), ("labels", labels)):
        value = jnp.asarray(value)
        if not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(
                f"{name} must be integer class indices, got dtype {value.dtype}. Take the argmax "
                "of the logits to get predictions."
            )
        arrays.append(value)
    predictions, labels = arrays
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must have the same shape, got {predictions.shape} and "
            f"{labels.shape}."
        )
    return predictions, labels


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Validated inputs of a loss, with the class axis moved last.

    Attributes:
      logits: the logits in the compute dtype, shape ``(..., num_classes)``.
      labels: the integer labels, shape ``(...)``.
      where: the class mask broadcast to the logits' shape, or None.
      num_classes: the number of classes of a whole row (the class axis's size, times the
        shards when it is split).
      out_dtype: dtype of the per-example result (the input logits' dtype).
      classes: how to reduce, select and read labels along the class axis (whole or split).
    """

    logits: jax.Array
    labels: jax.Array | None
    where: jax.Array | None
    num_classes: int
    out_dtype: jnp.dtype
    classes: _classes.ClassAxis = _classes.WHOLE

    def finish(self, loss: jax.Array) -> jax.Array:
        """``loss`` per example in the output dtype, NaN where a label is outside
        ``[0, num_classes)``.

        An index out of range is not a class: whole or split rows, every loss gives NaN there
        (JAX's gather would wrap -1 and fill C with NaN, and split rows would find no label at
        all), so that a NaN stop fires.
        """
        bad = (self.labels < 0) | (self.labels >= self.num_classes)
        return jnp.where(bad, jnp.nan, loss).astype(self.out_dtype)


def _class_axes(axis: Any, ndim: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``axis`` (an int or a tuple of ints, as in optax) as non-negative class axes, in the order
    given: the classes are flattened in that order (``axis=(3, 2)`` makes axis 3 the major one)."""
    axes = (axis,) if isinstance(axis, int | np.integer) else axis
    if (
        not isinstance(axes, tuple)
        or not axes
        or not all(isinstance(a, int | np.integer) for a in axes)
    ):
        raise TypeError(f"axis must be an int or a non-empty tuple of ints, got {axis!r}.")
    if not all(-ndim <= a < ndim for a in axes):
        raise ValueError(f"axis={axis} is out of range for logits of shape {shape}.")
    normalized = tuple(int(a) % ndim for a in axes)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"axis={axis} names the same axis twice.")
    return normalized


def _classes_last(array: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Moves ``axes`` to the end, in their order, and flattens them into one class axis (optax's
    tuple ``axis``)."""
    batch = tuple(a for a in range(array.ndim) if a not in axes)
    array = jnp.transpose(array, batch + axes)
    # The class count spelled out: -1 cannot be inferred from an empty batch.
    num_classes = int(np.prod(array.shape[len(batch) :]))
    return array.reshape(array.shape[: len(batch)] + (num_classes,))


def prepare(
    logits: Any,
    labels: Any = None,
    *,
    axis: int | tuple[int, ...] = -1,
    where: Any = None,
    min_classes: int = 1,
    tuple_axis: bool = True,
    class_axis_name: str | None = None,
) -> Prepared:
    """Validates logits, labels and a class mask; moves the class axis last; upcasts 16-bit floats.

    Args:
      logits: float array with the classes along ``axis``.
      labels: integer array whose shape is the logits' shape without ``axis`` (or None for
        functions that take no labels).
      axis: the class axis of ``logits``, or a tuple of axes whose elements together are the
        classes (optax's convention: a label is a flat index into ``logits`` sliced on them).
      where: optional boolean mask broadcastable to the logits' shape, or of exactly the labels'
        shape (a per-example mask, as in optax; it wins when both readings fit); False marks
        classes that take no part in the loss.
      min_classes: the smallest number of classes the caller can handle.
      tuple_axis: whether the caller can take a tuple ``axis`` (functions whose outputs or
        injected inputs keep the class axis cannot).
      class_axis_name: inside ``shard_map``, the mesh axis that the class axis is split over
        (each device holds a contiguous block of every row's classes), or None for whole rows.

    Raises:
      TypeError: logits not floating point, labels not integer, a malformed axis.
      ValueError: bad axis, labels of the wrong shape, too few classes, a mask that does not
        broadcast.
    """
    if not hasattr(logits, "dtype"):
        logits = np.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"logits must be a floating-point array, got dtype {logits.dtype}. "
            "Cast them with .astype(jnp.float32)."
        )
    ndim = np.ndim(logits)
    if ndim == 0:
        raise ValueError("logits must have a class axis, got a scalar.")
    if isinstance(axis, tuple) and not tuple_axis:
        raise ValueError(
            f"axis={axis}: this function takes one class axis (an int), not a tuple of axes."
        )
    axes = _class_axes(axis, ndim, tuple(np.shape(logits)))
    classes = _class_axis(class_axis_name, axes, logits, labels)
    num_classes = classes.global_size(int(np.prod([logits.shape[a] for a in axes])))
    if num_classes < min_classes:
        raise ValueError(
            f"logits have {num_classes} classes along axis {axis} (shape {logits.shape}); "
            f"this function needs at least {min_classes}."
        )
    # The dtype JAX holds such logits in: float32 for NumPy float64 without x64, as jnp.asarray
    # makes them (asking astype for float64 there would warn on every call).
    out_dtype = jax.dtypes.canonicalize_dtype(logits.dtype)
    moved = _classes_last(jnp.asarray(logits), axes).astype(compute_dtype(out_dtype))

    if labels is not None:
        if not hasattr(labels, "dtype"):
            labels = np.asarray(labels)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(
                f"labels must be integer class indices, got dtype {labels.dtype}. Losses whose "
                "name does not say otherwise take integer labels, not one-hot or soft targets."
            )
        expected = moved.shape[:-1]
        if tuple(labels.shape) != expected:
            raise ValueError(
                f"labels must have the logits' shape without the class axis: logits of shape "
                f"{tuple(logits.shape)} with axis={axis} need labels of shape {expected}, "
                f"got {tuple(labels.shape)}."
            )
        labels = jnp.asarray(labels)

    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_:
            raise TypeError(f"where must be a boolean mask, got dtype {where.dtype}.")
        batch_shape = tuple(n for a, n in enumerate(logits.shape) if a not in axes)
        if where.shape == batch_shape:
            # A per-example mask (optax): an excluded example has every class masked.
            where = jnp.expand_dims(where, axes)
        try:
            where = jnp.broadcast_to(where, logits.shape)
        except ValueError as error:
            raise ValueError(
                f"where of shape {where.shape} does not broadcast to the logits' shape "
                f"{tuple(logits.shape)}."
            ) from error
        where = _classes_last(where, axes)
    return Prepared(moved, labels, where, num_classes, out_dtype, classes)


def _class_axis(
    class_axis_name: Any, axes: tuple[int, ...], logits: Any, labels: Any
) -> _classes.ClassAxis:
    """The :class:`ClassAxis` of ``class_axis_name``, checked to be a mesh axis bound here.

    Inside ``shard_map`` with ``check_vma`` (the default) the types say what varies over which
    mesh axis, and the split is checked against them: the logits must vary over the axis (each
    device its own block of classes) and the labels must not (every block of a row reads the
    row's label). With ``check_vma=False`` nothing is typed and only the shapes can be checked.
    """
    if class_axis_name is None:
        return _classes.WHOLE
    if not isinstance(class_axis_name, str):
        raise TypeError(
            f"class_axis_name must be a mesh axis name (a str) or None, got {class_axis_name!r}."
        )
    if len(axes) > 1:
        raise ValueError(
            f"class_axis_name={class_axis_name!r} splits one class axis; a tuple of class axes "
            "is not supported with it."
        )
    try:
        jax.lax.axis_size(class_axis_name)
    except NameError as error:
        raise ValueError(
            f"class_axis_name={class_axis_name!r} is not an axis of an enclosing shard_map (or "
            "vmap): inside shard_map pass the mesh axis that the class axis is split over; under "
            "plain jax.jit pass None (XLA splits whole rows itself)."
        ) from error
    classes = _classes.ClassAxis(class_axis_name)
    if classes.shards > 1 and _varies(logits, class_axis_name) is False:
        raise ValueError(
            f"class_axis_name={class_axis_name!r}: the logits do not vary over mesh axis "
            f"{class_axis_name!r} (every device holds the same values), so no device holds a "
            f"block of the classes. Split the logits' class axis over it (in_specs "
            f"P(..., {class_axis_name!r})), or pass class_axis_name=None for whole rows."
        )
    if labels is not None and classes.shards > 1 and _varies(labels, class_axis_name):
        raise ValueError(
            f"class_axis_name={class_axis_name!r}: the labels vary over mesh axis "
            f"{class_axis_name!r}, but every block of a row's classes needs the row's label. "
            f"Replicate the labels over {class_axis_name!r} (e.g. P('data') for logits "
            f"P('data', {class_axis_name!r})); is {class_axis_name!r} the batch axis?"
        )
    return classes


def _varies(value: Any, axis_name: str) -> bool | None:
    """Whether ``value`` varies over the ``shard_map`` mesh axis ``axis_name``, by its type; None
    where the types do not say (``check_vma=False``, or a JAX without varying-axis types)."""
    if axis_name not in (_varying_axes(jax.lax.axis_index(axis_name)) or ()):
        return None
    return axis_name in (_varying_axes(value) or ())


def _varying_axes(value: Any) -> frozenset | None:
    """The mesh axes ``value``'s type varies over (``jax.typeof(x).vma``), or None if untyped."""
    aval = jax.typeof(value if hasattr(value, "dtype") else np.asarray(value))
    vma = getattr(aval, "vma", None)
    if vma is None:
        # JAX 0.10 keeps them in the manual axis type.
        vma = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
    return vma
