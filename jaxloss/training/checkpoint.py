"""Orbax checkpoints of a run: the training state, the best epoch so far, the metric history, the
run's config and the input pipeline's state, each verified when restored.

Arrays are saved as flat dicts keyed by their pytree paths (``jax.tree_util.keystr``), so the
on-disk layout does not depend on how Flax builds its pytree nodes, and a restore matches arrays by
name: a checkpoint of another model, or of one whose arrays were renamed or reordered, gives an
error naming the paths instead of weights loaded into the wrong slots.

Storage can go bad without Orbax noticing (flipped bytes in its data files restore silently), so
every checkpoint also holds a checksum of each array and the SHA-256 of its history and of the
pipeline state, and a restore recomputes them. An array's checksum is computed where its shards
live: each device sums a 64-bit mix of (global element index, element bits) over the elements it
holds and the sums are added across devices and processes, so no array is gathered to a host and
the checksum does not depend on the layout (a 2-process checkpoint restores on 1 process). A
checkpoint that lacks one of its items (state, best epoch, history, config, pipeline state,
checksums: an interrupted copy, a deleted directory) cannot be verified and counts as damaged.
:meth:`Checkpointer.restore` raises :class:`CheckpointError` on a mismatch;
:meth:`Checkpointer.restore_latest` instead falls back to the newest intact checkpoint and deletes
the damaged newer ones (the run trains those epochs again).

The directory may be any ``etils.epath`` path (``gs://`` buckets included). Every method that
touches the files is collective in multi-process JAX: call it on every process.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

__all__ = ["COSMETIC_CONFIG_FIELDS", "CheckpointError", "Checkpointer", "config_differences"]

# Settings that change how a run is watched, not what it computes: they may differ on resume.
COSMETIC_CONFIG_FIELDS = frozenset(
    {"progress_bar", "log_every_steps", "stop_on_nan", "tensorboard"}
)
# How many paths an error message lists before it only counts the rest.
_MAX_LISTED = 5
# What every checkpoint holds; one without any of them is damaged.
_ITEMS = ("state", "best", "history", "config", "data", "checksums")
# Names the array checksum below, so that a checkpoint with other checksums is not called corrupt.
_SCHEME = "mix64-v1"
# Two lanes of 32 bits (seeds of the index mix); each element adds mix(bits ^ mix(index + seed)).
_SEEDS = (0x243F6A88, 0x85A308D3)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into the current run (corrupt or incompatible).

    Example:
      A checkpoint of other shapes is refused, naming the array, instead of being loaded:

      >>> import tempfile
      >>> checkpointer = Checkpointer(tempfile.mkdtemp())
      >>> best = {"epoch": jnp.zeros(1)}
      >>> checkpointer.save(0, state={"w": jnp.zeros(3)}, best=best, history=[], config={}, data={})
      >>> checkpointer.restore(0, state={"w": jnp.zeros(4)}, best=best)
      Traceback (most recent call last):
        ...
      jaxloss.training.checkpoint.CheckpointError: The checkpoint in .../0 is incompatible with this config: state array ['w'] has shape (3,) ...
      >>> checkpointer.close()
    """


class _DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files cannot be read or no longer match their checksums."""


def config_differences(saved: dict, current: dict) -> list[str]:
    """The top-level fields in which two JSON-able run configs differ, cosmetic ones aside.

    Values are compared as JSON, so a tuple equals the list it is saved as and NaN equals NaN.

    >>> config_differences({"seed": 0, "progress_bar": True}, {"seed": 1, "progress_bar": False})
    ['seed']
    >>> config_differences({"model": {"sizes": [16]}}, {"model": {"sizes": (16,)}, "new": 1})
    ['new']
    """
    return sorted(
        key
        for key in set(saved) | set(current)
        if key not in COSMETIC_CONFIG_FIELDS
        and json.dumps(saved.get(key), sort_keys=True)
        != json.dumps(current.get(key), sort_keys=True)
    )


def _flatten(tree: Any) -> dict[str, Any]:
    """The leaves of ``tree`` keyed by their paths, in leaf order.

    >>> list(_flatten({"b": [1, 2], "a": {"w": 3}}))
    ["['a']['w']", "['b'][0]", "['b'][1]"]
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _absolute(directory: str | os.PathLike) -> epath.Path:
    """``directory`` as a path; local ones are made absolute, URLs are kept as they are.

    >>> str(_absolute("gs://bucket/run/checkpoints"))
    'gs://bucket/run/checkpoints'
    >>> _absolute("run").is_absolute()
    True
    """
    if "://" in os.fspath(directory):
        return epath.Path(directory)
    return epath.Path(os.path.abspath(directory))


def _mix(x, xp):
    """MurmurHash3's 32-bit finalizer, elementwise on uint32 (wrapping products)."""
    x = x ^ (x >> 16)
    x = x * xp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * xp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _words(x, xp):
    """The bits of ``x`` as uint32, one per element (two, on a new last axis, for 64-bit ones)."""
    if x.dtype == bool:
        x = x.astype(xp.uint8)
    unsigned = {1: xp.uint8, 2: xp.uint16, 4: xp.uint32, 8: xp.uint32}[x.dtype.itemsize]
    if xp is np:
        bits = np.ascontiguousarray(x).view(unsigned)
        if x.dtype.itemsize == 8:
            bits = bits.reshape(*x.shape, 2)
    else:
        bits = jax.lax.bitcast_convert_type(x, unsigned)
    return bits.astype(xp.uint32)


def _array_checksum(x, xp) -> Any:
    """Two uint32 sums of mixed (global index, bits) terms over the elements of ``x``.

    Built from elementwise operations and a sum only, so under ``jit`` each device sums the
    elements of its shards (broadcast iotas give their global indices, with no reshape that
    would move data) and XLA adds the devices' sums. ``xp`` is ``jnp`` (device arrays) or ``np``.
    """
    words = _words(x, xp)
    index = xp.zeros(words.shape, xp.uint32)
    for axis, size in enumerate(words.shape):
        shape = [1] * words.ndim
        shape[axis] = size
        index = index * xp.uint32(size) + xp.arange(size, dtype=xp.uint32).reshape(shape)
    return xp.stack(
        [
            xp.sum(_mix(words ^ _mix(index + xp.uint32(seed), xp), xp), dtype=xp.uint32)
            for seed in _SEEDS
        ]
    )


@jax.jit
def _device_checksums(arrays: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {key: _array_checksum(value, jnp) for key, value in arrays.items()}


def _checksums(flat: dict[str, Any]) -> dict[str, str]:
    """Each array's checksum as 16 hex digits: device arrays' computed where their shards are (a
    collective: every process calls it with the same arrays), host arrays' on the host."""
    on_devices = {key: leaf for key, leaf in flat.items() if isinstance(leaf, jax.Array)}
    sums = {
        key: np.asarray(value.addressable_data(0))
        for key, value in _device_checksums(on_devices).items()
    }
    for key, leaf in flat.items():
        if key not in sums:
            sums[key] = _array_checksum(np.asarray(leaf), np)
    return {key: "".join(f"{int(lane):08x}" for lane in sums[key]) for key in sorted(flat)}


def _json_checksum(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _on_every_process(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (collective), so that all take the same branch."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.process_allgather(np.asarray(ok)).all())


def _read(path: str, read: Callable[[], Any]) -> Any:
    """``read()``; a failure on any process raises a damaged-checkpoint error on all."""
    try:
        result, error = read(), None
    except Exception as caught:  # Orbax raises many types for damaged files.
        result, error = None, caught
    if not _on_every_process(error is None):
        detail = f"{type(error).__name__}: {error}" if error else "unreadable on another process"
        raise _DamagedCheckpointError(
            f"The checkpoint in {path} is corrupt or incompatible with this config "
            f"({detail}). Delete it or use a new workdir."
        ) from error
    return result


def _listed(names: list[str]) -> str:
    more = len(names) - _MAX_LISTED
    return ", ".join(names[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def _restore_target(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    return np.empty(np.shape(leaf), np.asarray(leaf).dtype)  # restored as a NumPy array


def _check_layout(item: str, saved: Any, target: dict[str, Any], path: str) -> None:
    """Raises unless ``saved`` (Orbax metadata) holds ``target``'s paths, shapes and dtypes."""
    on_disk = set(saved or ())
    only_on_disk, only_here = sorted(on_disk - set(target)), sorted(set(target) - on_disk)
    if only_on_disk or only_here:
        raise CheckpointError(
            f"The checkpoint in {path} does not hold this config's {item}: arrays only in the "
            f"checkpoint: {_listed(only_on_disk) or 'none'}; only in this config: "
            f"{_listed(only_here) or 'none'}. It was written by a different model or run "
            "layout: delete it or use a new workdir."
        )
    for key, leaf in target.items():
        disk = (tuple(saved[key].shape), np.dtype(saved[key].dtype))
        here = (tuple(np.shape(leaf)), np.dtype(leaf.dtype))
        if disk != here:
            raise CheckpointError(
                f"The checkpoint in {path} is incompatible with this config: {item} array {key} "
                f"has shape {disk[0]} and dtype {disk[1]} on disk, {here[0]} and {here[1]} here "
                "(different model, number of classes or num_seeds?). Delete it or use a new "
                "workdir."
            )


class Checkpointer:
    """Saves one checkpoint per epoch under ``directory`` and restores the latest intact one.

    Saves are asynchronous (Orbax copies the arrays to host memory and writes them in a thread
    while training goes on) and atomic: a checkpoint counts once its write has finished, so a
    crash during one leaves the previous checkpoints. :meth:`close` waits for the last write.

    Args:
      directory: where checkpoints live (created if needed): a local path or a URL such as
        ``gs://bucket/run/checkpoints``.
      max_to_keep: how many recent epochs to keep.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        self._path = _absolute(directory)
        self.directory = str(self._path)
        self._manager = ocp.CheckpointManager(
            self._path,
            # Named handlers let a fresh manager read a checkpoint's metadata before restoring.
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "best": ocp.StandardCheckpointHandler(),
                "history": ocp.JsonCheckpointHandler(),
                "checksums": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True
            ),
        )

    def latest_epoch(self) -> int | None:
        """The last epoch with a complete checkpoint, or None (waits for a save in flight)."""
        self._manager.wait_until_finished()
        return self._manager.latest_step()

    def save(
        self,
        epoch: int,
        *,
        state: Any,
        best: dict,
        history: list,
        config: dict,
        data: dict,
    ) -> None:
        """Starts writing the checkpoint of a finished epoch, with the checksums of all it holds.

        Returns once the arrays are copied to host memory; the files are written in the
        background (the next save, :meth:`latest_epoch` and :meth:`close` wait for them).

        Args:
          epoch: the epoch just finished.
          state: the training state (a pytree of arrays).
          best: the best-epoch record (a dict of arrays).
          history: the per-epoch metric records (JSON-able).
          config: the run's config as a JSON-able dict, for :meth:`restore` to compare.
          data: the input pipeline's state (:meth:`jaxloss.data.BatchIterator.get_state`), so that
            a resumed run reads the batches an uninterrupted one would.
        """
        flat = {"state": _flatten(state), "best": _flatten(best)}
        checksums = {item: _checksums(arrays) for item, arrays in flat.items()}
        checksums.update(
            scheme=_SCHEME,
            history=_json_checksum(history),
            config=_json_checksum(config),
            data=_json_checksum(data),
        )
        items = {item: ocp.args.StandardSave(arrays) for item, arrays in flat.items()}
        items.update(
            history=ocp.args.JsonSave(history),
            config=ocp.args.JsonSave(config),
            data=ocp.args.JsonSave(data),
            checksums=ocp.args.JsonSave(checksums),
        )
        self._manager.save(epoch, args=ocp.args.Composite(**items))

    def restore(
        self, epoch: int, *, state: Any, best: dict, config: dict | None = None
    ) -> tuple[Any, dict, list, dict | None]:
        """Restores ``epoch`` into the structure, shapes and shardings of ``state`` and ``best``.

        Args:
          epoch: a saved epoch (see :meth:`latest_epoch`).
          state: a training state of the current config (its values are not used).
          best: a best-epoch record of the current config (its values are not used).
          config: the current run's config as a JSON-able dict; if given, the checkpoint's must
            agree with it on all fields but :data:`COSMETIC_CONFIG_FIELDS`.

        Returns:
          ``(state, best, history, data)`` as saved.

        Raises:
          CheckpointError: the checkpoint is unreadable, lacks one of its items, does not match
            its checksums, or was written by a different config, model or run layout. The message names the
            checkpoint's path and the differing fields or arrays.
        """
        self._manager.wait_until_finished()  # a save of this epoch may be in flight
        path = str(self._path / str(epoch))
        flat = {"state": _flatten(state), "best": _flatten(best)}
        saved = _read(path, lambda: self._manager.item_metadata(epoch))
        missing = [item for item in _ITEMS if item not in saved]
        if missing:
            raise _DamagedCheckpointError(
                f"The checkpoint in {path} is damaged: it lacks its {', '.join(missing)} "
                f"(it holds {', '.join(sorted(saved)) or 'nothing'}), so it cannot be verified. "
                "Delete it or use a new workdir."
            )
        head = _read(
            path,
            lambda: self._manager.restore(
                epoch,
                args=ocp.args.Composite(
                    config=ocp.args.JsonRestore(), checksums=ocp.args.JsonRestore()
                ),
            ),
        )
        expected = head["checksums"]
        if expected.get("scheme") != _SCHEME:
            raise CheckpointError(
                f"The checkpoint in {path} was written by an older jaxloss, with other checksums. "
                "Delete it or use a new workdir."
            )
        if _json_checksum(head["config"]) != expected["config"]:
            raise _DamagedCheckpointError(
                f"The checkpoint in {path} is corrupt: its config does not match the checksum "
                "saved with it (damaged storage?). Delete it or use a new workdir."
            )
        if config is not None:
            changed = config_differences(head["config"], config)
            if changed:
                raise CheckpointError(
                    f"The checkpoint in {path} was written by a run with a different config "
                    f"(differences in: {', '.join(changed)}). Use a new workdir to train with "
                    "this config."
                )
        for item, arrays in flat.items():
            _check_layout(item, saved[item], arrays, path)
        items = {
            item: ocp.args.StandardRestore(jax.tree.map(_restore_target, arrays))
            for item, arrays in flat.items()
        }
        restored = _read(
            path,
            lambda: self._manager.restore(
                epoch,
                args=ocp.args.Composite(
                    **items, history=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()
                ),
            ),
        )
        damaged = [
            f"{item} array {key}"
            for item in flat
            for key, checksum in _checksums(restored[item]).items()
            if checksum != expected[item].get(key)
        ]
        data = restored["data"]
        if _json_checksum(restored["history"]) != expected["history"]:
            damaged.append("the history")
        if _json_checksum(data) != expected["data"]:
            damaged.append("the input pipeline state")
        if damaged:
            raise _DamagedCheckpointError(
                f"The checkpoint in {path} is corrupt: the checksums saved with it do not match "
                f"{_listed(damaged)} (damaged storage?). Delete it or use a new workdir."
            )
        state, best = (
            jax.tree.unflatten(
                jax.tree.structure(tree), [restored[item][key] for key in flat[item]]
            )
            for item, tree in (("state", state), ("best", best))
        )
        return state, dict(best), list(restored["history"]), data

    def restore_latest(
        self, *, state: Any, best: dict, config: dict | None = None
    ) -> tuple[int, Any, dict, list, dict | None] | None:
        """Restores the newest intact checkpoint, deleting the damaged ones newer than it.

        A damaged checkpoint (unreadable, or not matching its checksums) is skipped with a
        warning naming it, and deleted once an older one restores, so that the run trains its
        epoch again. Nothing is deleted when none restores.

        Args:
          state: a training state of the current config (its values are not used).
          best: a best-epoch record of the current config (its values are not used).
          config: the current run's config as a JSON-able dict (see :meth:`restore`).

        Returns:
          ``(epoch, state, best, history, data)`` of the restored checkpoint (see :meth:`restore`),
          or None if there is none.

        Raises:
          CheckpointError: every checkpoint is damaged (the message names each), or the newest
            intact one was written by a different config, model or run layout.
        """
        damaged: list[tuple[int, CheckpointError]] = []
        self._manager.wait_until_finished()
        for epoch in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self.restore(epoch, state=state, best=best, config=config)
            except _DamagedCheckpointError as error:
                logging.warning("Skipping a damaged checkpoint: %s", error)
                damaged.append((epoch, error))
                continue
            for bad, _ in damaged:
                self._manager.delete(bad)
            if damaged:
                logging.warning(
                    "Resumed from epoch %d, the newest intact checkpoint in %s; deleted the "
                    "damaged ones of epochs %s.",
                    epoch,
                    self.directory,
                    [bad for bad, _ in damaged],
                )
            return (epoch, *restored)
        if damaged:
            raise CheckpointError(
                f"No checkpoint in {self.directory} is intact. "
                + " ".join(str(error) for _, error in damaged)
            )
        return None

    def close(self) -> None:
        """Waits for the last save to finish, then releases the manager."""
        self._manager.close()
