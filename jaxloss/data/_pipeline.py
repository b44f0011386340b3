"""Per-host streaming batches on Grain: each process reads its own rows of every global batch.

The global batch at step t is a pure function of (source, seeds, global batch size, t), whatever
the number of processes: process p of P reads the contiguous block of B / P rows at offset
p · B / P, and :func:`global_batch` puts the blocks side by side into one ``jax.Array``. The
iterator's whole state is the next step, so resuming is exact and the state fits in a checkpoint.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Sequence

import jax
import numpy as np
from absl import flags

from jaxloss._validation import check_integer
from jaxloss.data._sources import Source

__all__ = ["BatchIterator", "eval_batches", "global_batch", "train_batches"]


def _process(process_index: int | None, process_count: int | None, global_batch_size: int):
    """(p, P, B / P) after checking that P processes can split the global batch evenly."""
    process_count = check_integer(
        "process_count", jax.process_count() if process_count is None else process_count, lower=1
    )
    process_index = check_integer(
        "process_index",
        jax.process_index() if process_index is None else process_index,
        lower=0,
        upper=process_count - 1,
    )
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be divisible by the {process_count} "
            f"processes."
        )
    return process_index, process_count, global_batch_size // process_count


class _TrainBatcher:
    """Item -> this host's rows of the global training batches of its steps (picklable for worker
    processes)."""

    def __init__(
        self, source, seeds, global_batch_size, process_index, local_batch_size, stack, group
    ):
        self.source = source
        self.seeds = seeds
        self.global_batch_size = global_batch_size
        self.offset = process_index * local_batch_size
        self.local_batch_size = local_batch_size
        self.stack = stack
        # None: one step per item, without a step axis.
        self.grouped = group is not None
        self.group = group or 1
        self.steps_per_epoch = len(source) // global_batch_size
        self._init_cache()

    def _init_cache(self):
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_orders", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_cache()

    def _order(self, seed: int, epoch: int) -> np.ndarray:
        # An epoch's permutation is drawn once and shared by its steps; reader threads may straddle
        # an epoch boundary, so the previous epoch's orders are kept too.
        with self._lock:
            order = self._orders.get((seed, epoch))
            if order is None:
                order = np.random.default_rng([seed, epoch]).permutation(len(self.source))
                self._orders = {k: v for k, v in self._orders.items() if k[1] >= epoch - 1}
                self._orders[(seed, epoch)] = order
        return order

    def __call__(self, item: int) -> dict[str, np.ndarray]:
        # Item i holds steps [i·G, (i + 1)·G), read at once (one gather from the source).
        rows = []
        for step in range(item * self.group, (item + 1) * self.group):
            epoch, position = divmod(step, self.steps_per_epoch)
            start = position * self.global_batch_size + self.offset
            rows += [
                self._order(s, epoch)[start : start + self.local_batch_size] for s in self.seeds
            ]
        batch = self.source.read(np.concatenate(rows))
        lead = (len(self.seeds), self.local_batch_size) if self.stack else (self.local_batch_size,)
        if self.grouped:
            lead = (self.group, *lead)
        return {key: value.reshape(lead + value.shape[1:]) for key, value in batch.items()}


class _EvalBatcher:
    """Step -> this host's rows of the global evaluation batch, zero-padded past the split."""

    def __init__(self, source, global_batch_size, process_index, local_batch_size):
        self.source = source
        self.global_batch_size = global_batch_size
        self.offset = process_index * local_batch_size
        self.local_batch_size = local_batch_size

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        start = step * self.global_batch_size + self.offset
        positions = np.arange(start, start + self.local_batch_size)
        mask = positions < len(self.source)
        valid = int(mask.sum())
        read = self.source.read(positions[:valid])
        # Zero padding: finite inputs, label 0, excluded by the mask.
        features = np.zeros(
            (self.local_batch_size, *self.source.feature_shape), read["features"].dtype
        )
        labels = np.zeros(self.local_batch_size, np.int32)
        features[:valid] = read["features"]
        labels[:valid] = read["labels"]
        return {"features": features, "labels": labels, "mask": mask}


class BatchIterator:
    """This host's batches, step after step, read by Grain; resumable from a one-number state.

    Made by :func:`train_batches` and :func:`eval_batches`. Close it (or use it in a ``with``
    block) to stop its worker processes.

    Example:
      >>> from jaxloss.data import Dataset, InMemorySource
      >>> ds = Dataset(np.arange(6.0)[:, None], np.arange(6) % 2, 2, ("a", "b"), "toy")
      >>> source = InMemorySource(ds)
      >>> with train_batches(source, global_batch_size=2, seed=0) as it:
      ...     first = [next(it)["features"].ravel().tolist() for _ in range(3)]
      ...     state = it.get_state()
      >>> state
      {'step': 3}
      >>> with train_batches(source, global_batch_size=2, seed=0) as resumed:
      ...     resumed.set_state({"step": 1})  # resumes exactly: the same batches from step 1
      ...     [next(resumed)["features"].ravel().tolist() for _ in range(2)] == first[1:]
      True
    """

    def __init__(
        self,
        batcher: Callable[[int], dict],
        *,
        start_step: int,
        num_steps: int | None,
        worker_count: int,
        prefetch: int,
        steps_per_item: int = 1,
    ):
        self._batcher = batcher
        self._steps_per_item = steps_per_item
        self._stop = sys.maxsize if num_steps is None else num_steps
        self._worker_count = check_integer("worker_count", worker_count, lower=0)
        self._prefetch = check_integer("prefetch", prefetch, lower=0)
        self._iterator = None
        self.set_state({"step": start_step})

    def _open(self):
        import grain

        group = self._steps_per_item
        items = grain.MapDataset.range(self._step // group, max(self._step, self._stop) // group)
        steps = items.map(self._batcher)
        # Threads read whole batches ahead in each process (0: read when asked, in this thread).
        threads = min(self._prefetch, 4)
        pipeline = steps.to_iter_dataset(
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=self._prefetch)
        )
        if self._worker_count:
            if not flags.FLAGS.is_parsed():
                # Grain 0.2 reads an absl flag when starting workers, which fails outside an absl
                # app (tests, notebooks) unless the flags count as parsed; their defaults apply.
                flags.FLAGS.mark_as_parsed()
            # Grain gives worker w the items w, w + W, ... and returns them in order.
            pipeline = pipeline.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self._worker_count, per_worker_buffer_size=max(self._prefetch, 1)
                )
            )
        return iter(pipeline)

    @property
    def step(self) -> int:
        """The step of the next batch."""
        return self._step

    def get_state(self) -> dict[str, int]:
        """``{"step": next step}``, JSON-able; :meth:`set_state` of it yields the same batches."""
        return {"step": self._step}

    def set_state(self, state: dict) -> None:
        """Continues from ``state`` (from :meth:`get_state`, possibly of another iterator of the same
        arguments in another process)."""
        step = check_integer("step", state["step"], lower=0, upper=self._stop)
        if step % self._steps_per_item:
            raise ValueError(
                f"step {step} is inside an item of {self._steps_per_item} steps; resume at a "
                "multiple of steps_per_item."
            )
        self.close()
        self._step = step
        self._iterator = self._open()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._step >= self._stop:
            raise StopIteration
        batch = next(self._iterator)
        self._step += self._steps_per_item
        return batch

    def __len__(self) -> int:
        """Batches left (evaluation iterators only)."""
        if self._stop == sys.maxsize:
            raise TypeError("a training iterator is endless.")
        return self._stop - self._step

    def close(self) -> None:
        """Stops the worker processes, if any (the iterator can be restarted by set_state)."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def train_batches(
    source: Source,
    *,
    global_batch_size: int,
    seed: int | Sequence[int],
    start_step: int = 0,
    steps_per_item: int | None = None,
    worker_count: int = 0,
    prefetch: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
    """This host's rows of every global training batch, endlessly over epochs.

    Step t is step t mod S of epoch t // S, S = ⌊N / B⌋ (the last N mod B examples of each epoch's
    order are dropped). Epoch e's order is ``np.random.default_rng([seed, e]).permutation(N)``;
    global batch t is rows [(t mod S)·B, (t mod S + 1)·B) of it, and process p of P yields the B / P of them at offset p · B / P. So the global batch does
    not depend on P, and the iterator's state is the step alone.

    Args:
      source: the examples (see :func:`load_source`).
      global_batch_size: B, summed over all processes; a multiple of P.
      seed: the shuffle seed, or one per population member: the batches are then stacked, member i
        with its own order from ``seed[i]``.
      start_step: the first step to yield (resume at ``epoch * S + step``); a multiple of
        ``steps_per_item``.
      steps_per_item: G, consecutive steps per item, stacked on a leading axis (G, ...), so
        that a compiled loop can take several steps per call (None: one step per item, no
        step axis).
      worker_count: Grain worker processes reading batches (0: this process, enough for small or
        in-memory data; workers receive the source pickled).
      prefetch: batches read ahead by background threads in each process (0: none).
      process_index: p (default ``jax.process_index()``).
      process_count: P (default ``jax.process_count()``).

    Returns:
      A :class:`BatchIterator` of dicts with "features" ``(B/P, *feature_shape)`` in the source's
      dtype and "labels" (B/P,) int32, each with a leading member axis (M, B/P, ...) when ``seed``
      is a sequence, and a leading step axis (G, ...) with ``steps_per_item``. Apply
      ``source.normalization`` on device.

    Raises:
      ValueError: B larger than N (an empty source included), or not divisible by P;
        ``start_step`` not a multiple of G.

    Example:
      >>> from jaxloss.data import Dataset, InMemorySource
      >>> ds = Dataset(np.arange(10.0)[:, None], np.arange(10) % 2, 2, ("a", "b"), "toy")
      >>> it = train_batches(InMemorySource(ds), global_batch_size=4, seed=0, start_step=2,
      ...                    process_index=1, process_count=2)
      >>> next(it)["features"].ravel().tolist() == np.random.default_rng([0, 1]).permutation(10)[
      ...     2:4].tolist()
      True
      >>> it.get_state()
      {'step': 3}
    """
    global_batch_size = check_integer("global_batch_size", global_batch_size, lower=1)
    stack = not isinstance(seed, int | np.integer)
    seeds = tuple(check_integer("seed", s, lower=0) for s in (seed if stack else [seed]))
    if not seeds:
        raise ValueError("seed must be an integer or a non-empty sequence of them.")
    if global_batch_size > len(source):
        raise ValueError(
            f"global_batch_size={global_batch_size} exceeds the {len(source)} examples of "
            f"{source.name!r}; no full batch can be formed."
        )
    p, _, local = _process(process_index, process_count, global_batch_size)
    if steps_per_item is not None:
        steps_per_item = check_integer("steps_per_item", steps_per_item, lower=1)
    batcher = _TrainBatcher(source, seeds, global_batch_size, p, local, stack, steps_per_item)
    return BatchIterator(
        batcher,
        start_step=check_integer("start_step", start_step, lower=0),
        steps_per_item=steps_per_item or 1,
        num_steps=None,
        worker_count=worker_count,
        prefetch=prefetch,
    )


def eval_batches(
    source: Source,
    *,
    global_batch_size: int,
    worker_count: int = 0,
    prefetch: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
    """This host's rows of the global evaluation batches: every example once, in order.

    Global batch t holds examples [t·B, (t + 1)·B); process p yields the B / P rows at offset
    p · B / P. Rows past the end of the split (all in the last ⌈N / B⌉-th batch) are zeros with
    ``mask`` False, so every process yields ⌈N / B⌉ batches of equal shape, and the global
    batches concatenated and cut to N rows are the split in order.

    Args:
      source: the examples.
      global_batch_size: B, summed over all processes; a multiple of P.
      worker_count: Grain worker processes (0: this process).
      prefetch: batches read ahead by background threads (0: none; at most the ⌈N / B⌉ - 1 batches
        that there are to read ahead).
      process_index: p (default ``jax.process_index()``).
      process_count: P (default ``jax.process_count()``).

    Returns:
      A :class:`BatchIterator` of ⌈N / B⌉ dicts with "features" ``(B/P, *feature_shape)``,
      "labels" ``(B/P,)`` int32 and "mask" ``(B/P,)`` bool.

    Example:
      >>> from jaxloss.data import Dataset, InMemorySource
      >>> ds = Dataset(np.zeros((5, 2)), np.arange(5) % 2, 2, ("a", "b"), "toy")
      >>> [b["mask"].tolist() for b in eval_batches(InMemorySource(ds), global_batch_size=2)]
      [[True, True], [True, True], [True, False]]

    Raises:
      ValueError: an empty source, or B not divisible by P.
    """
    global_batch_size = check_integer("global_batch_size", global_batch_size, lower=1)
    p, _, local = _process(process_index, process_count, global_batch_size)
    if not len(source):
        raise ValueError(f"{source.name!r} holds no examples: there is nothing to evaluate.")
    num_steps = math.ceil(len(source) / global_batch_size)
    return BatchIterator(
        _EvalBatcher(source, global_batch_size, p, local),
        start_step=0,
        num_steps=num_steps,
        worker_count=worker_count,
        # Reading ahead needs batches ahead: a one-batch split is read when asked, without
        # starting reader threads (which cost more than the read, every epoch).
        prefetch=min(check_integer("prefetch", prefetch, lower=0), num_steps - 1),
    )


def global_batch(batch, sharding: jax.sharding.NamedSharding):
    """Turns every host's local batch into one global ``jax.Array`` per entry, without copies
    between hosts.

    The axis that ``sharding`` splits over the mesh's "data" axis grows P-fold: process p's rows
    become global rows [p·b, (p + 1)·b), as :func:`train_batches` and :func:`eval_batches` assume.
    That holds when process p's devices hold the p-th contiguous block of "data" (a mesh over
    ``jax.devices()``, which lists devices by process); other layouts raise.

    Args:
      batch: a pytree of host-local NumPy arrays, e.g. a batch of :func:`train_batches`.
      sharding: ``NamedSharding(mesh, P(None, "data"))`` for stacked (M, b, ...) member batches
        (``P(None, None, "data")`` for items of G steps (G, M, b, ...)),
        ``NamedSharding(mesh, P("data"))`` for (b, ...) evaluation batches.

    Returns:
      The pytree of global ``jax.Array`` s, placed by ``sharding``.

    Raises:
      ValueError: the sharding does not split an axis over "data", or this process's devices do
        not hold its contiguous block of it.

    Example:
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> batch = {"labels": np.arange(4 * jax.device_count(), dtype=np.int32)}
      >>> labels = global_batch(batch, NamedSharding(mesh, P("data")))["labels"]
      >>> labels.shape == (4 * jax.device_count(),), labels.sharding.spec == P("data")
      (True, True)
    """
    spec = tuple(sharding.spec)
    axes = [
        i
        for i, entry in enumerate(spec)
        if entry == "data" or (isinstance(entry, tuple) and "data" in entry)
    ]
    if len(axes) != 1:
        raise ValueError(f"sharding must split exactly one axis over 'data', got {sharding.spec}.")
    axis = axes[0]
    p, count = jax.process_index(), jax.process_count()
    if count == 1:
        # One process holds the whole batch: a plain transfer, several times cheaper per step.
        return jax.device_put(batch, sharding)

    def make(local):
        local = np.asarray(local)
        shape = list(local.shape)
        shape[axis] *= count
        blocks = sharding.addressable_devices_indices_map(tuple(shape)).values()
        starts = {b[axis].indices(shape[axis])[0] for b in blocks}
        stops = {b[axis].indices(shape[axis])[1] for b in blocks}
        if min(starts) != p * local.shape[axis] or max(stops) != (p + 1) * local.shape[axis]:
            raise ValueError(
                f"process {p}'s devices do not hold block {p} of the 'data' axis; build the mesh "
                "over jax.devices() in their order."
            )
        return jax.make_array_from_process_local_data(sharding, local, tuple(shape))

    return jax.tree.map(make, batch)
