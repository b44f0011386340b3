"""The class axis of prepared arrays (last), whole or split over a mesh axis inside ``shard_map``.

Under ``jax.jit`` a loss sees whole rows whatever their placement (XLA splits the work). Inside
``shard_map`` with the class axis split over a mesh axis (many classes, as vocabulary-parallel
cross-entropy), a loss sees its device's classes only: every reduction over classes, every
selection and every read of the label's entry must then combine the shards. :class:`ClassAxis` is
the one place that knows how; the losses call its methods instead of ``jnp.sum(..., axis=-1)``,
``lax.top_k`` or ``x[..., labels]``, and the same code serves both cases.

Labels are global class indices; per-class vectors (counts, weights) are split like the classes.
Shard i holds classes ``[i * n, (i + 1) * n)`` of a row, ``n`` being the local number of classes,
as ``shard_map`` with ``P(..., axis_name)`` places them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss import _selection

__all__ = ["ClassAxis", "WHOLE"]


@dataclasses.dataclass(frozen=True)
class ClassAxis:
    """Reductions, selections and label reads along the last axis, across shards if it is split.

    Attributes:
      name: the mesh axis (of an enclosing ``shard_map``) the classes are split over, or None
        when each device holds whole rows.
    """

    name: str | None = None

    @property
    def shards(self) -> int:
        """How many pieces the classes are split into (1 for whole rows)."""
        return 1 if self.name is None else lax.axis_size(self.name)

    def global_size(self, local_size: int) -> int:
        """The number of classes of a whole row."""
        return local_size * self.shards

    def indices(self, local_size: int) -> jax.Array:
        """The global class index of each local position, shape ``(local_size,)``."""
        positions = jnp.arange(local_size)
        if self.name is None:
            return positions
        return positions + lax.axis_index(self.name) * local_size

    def is_label(self, labels: jax.Array, local_size: int) -> jax.Array:
        """Whether each local class is the label's, shape ``labels.shape + (local_size,)``."""
        return self.indices(local_size) == labels[..., None]

    def sum(self, values: jax.Array) -> jax.Array:
        """Σ over the classes of a row, shape ``values.shape[:-1]``."""
        total = jnp.sum(values, axis=-1)
        return total if self.name is None else lax.psum(total, self.name)

    def max(self, values: jax.Array) -> jax.Array:
        """max over the classes of a row, without gradient (a shift or a bound)."""
        top = jnp.max(lax.stop_gradient(values), axis=-1)
        return top if self.name is None else lax.pmax(top, self.name)

    def min(self, values: jax.Array) -> jax.Array:
        """min over the classes of a row, without gradient (a shift or a bound)."""
        low = jnp.min(lax.stop_gradient(values), axis=-1)
        return low if self.name is None else lax.pmin(low, self.name)

    def label_value(self, values: jax.Array, labels: jax.Array) -> jax.Array:
        """``values[..., labels]``: each row's entry at its (global) label, shape ``labels.shape``.

        On whole rows a gather; on split rows the shard that holds the label gives it, the others
        0 (a masked sum, so that a ``-inf`` or NaN elsewhere in the row does not enter).
        """
        if self.name is None:
            return jnp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]
        at = self.is_label(labels, values.shape[-1])
        return self.sum(jnp.where(at, values, jnp.zeros((), values.dtype))).astype(values.dtype)

    def take(self, vector: jax.Array, labels: jax.Array) -> jax.Array:
        """``vector[labels]`` for a per-class vector (split like the classes), shape ``labels.shape``."""
        if self.name is None:
            return vector[labels]
        at = self.is_label(labels, vector.shape[-1])
        return self.sum(jnp.where(at, vector, jnp.zeros((), vector.dtype)))

    def top_k(self, values: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
        """The k largest entries of each row, descending, and their global indices.

        ``lax.top_k``'s results, ties included (lowest index first), and derivative. On split rows
        each shard selects its own top k (every entry of the row's top k is in its shard's) and
        only those k candidates per shard cross devices.
        """
        if self.name is None:
            return _selection.top_k(values, k)
        local_size = values.shape[-1]
        local, index = _selection.top_k(values, min(k, local_size))
        index = index + lax.axis_index(self.name) * local_size
        # The merge ranks the candidates' bit patterns, gathered exactly: a sum of floats turns
        # -0.0 into +0.0, which top_k ranks above -0.0. Gathered in shard order, lowest index
        # first within a shard, the merge keeps ties in global index order.
        bits = jnp.dtype(f"int{8 * local.dtype.itemsize}")
        exact = lax.bitcast_convert_type(
            self._gather(lax.bitcast_convert_type(lax.stop_gradient(local), bits)), local.dtype
        )
        _, position = _selection.top_k(exact, k)
        best = jnp.take_along_axis(self._gather(local), position, axis=-1)
        return best, jnp.take_along_axis(self._gather(index), position, axis=-1)

    def whole(self, values: jax.Array) -> jax.Array:
        """The whole rows (all classes in order) on every device: for what cannot combine shards."""
        return values if self.name is None else self._gather(values)

    def _gather(self, values: jax.Array) -> jax.Array:
        """The shards' blocks of the last axis, concatenated in shard order, on every device.

        An all-gather as a sum of zero-padded blocks: the result is the same on every device and
        typed so (``shard_map``'s replication check accepts it as an output replicated over the
        axis, which ``lax.all_gather``'s is not), and its transpose hands each shard the
        cotangent of its own block.
        """
        summable = values.astype(jnp.int32) if values.dtype == jnp.bool_ else values
        slots = lax.axis_index(self.name) == jnp.arange(self.shards)
        blocks = jnp.where(slots[:, None], summable[..., None, :], jnp.zeros((), summable.dtype))
        gathered = lax.psum(blocks, self.name).reshape(values.shape[:-1] + (-1,))
        return gathered.astype(values.dtype)


WHOLE = ClassAxis()
