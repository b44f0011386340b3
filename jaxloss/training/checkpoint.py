"""Orbax checkpoints of a run: the training state, the best epoch so far and the metric history.

The state is saved as a flat dict of its leaves, so the on-disk layout does not depend on how Flax
names pytree nodes, and a restored checkpoint is checked leaf by leaf against the state the current
config builds: a checkpoint of another model gives an error that says so, not a shape error deep in
Orbax.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into the current run (corrupt or incompatible)."""


def _flatten(tree: Any) -> dict[str, Any]:
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


class Checkpointer:
    """Saves one checkpoint per epoch under ``directory`` and restores the latest.

    Args:
      directory: where checkpoints live (created if needed).
      max_to_keep: how many recent epochs to keep on disk.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            # Named handlers let a fresh manager read a checkpoint's metadata before restoring.
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "best": ocp.StandardCheckpointHandler(),
                "history": ocp.JsonCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
            ),
        )

    def latest_epoch(self) -> int | None:
        """The last epoch with a complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, epoch: int, *, state: Any, best: dict, history: list) -> None:
        """Writes the checkpoint of a finished epoch (atomically: a crash leaves the old ones)."""
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_flatten(state)),
                best=ocp.args.StandardSave(best),
                history=ocp.args.JsonSave(history),
            ),
        )

    def restore(self, epoch: int, *, state: Any, best: dict) -> tuple[Any, dict, list]:
        """Restores ``epoch`` into the structure, shapes and shardings of ``state`` and ``best``.

        Args:
          epoch: a saved epoch (see :meth:`latest_epoch`).
          state: a training state of the current config (its values are not used).
          best: a best-epoch record of the current config (its values are not used).

        Returns:
          ``(state, best, history)`` as saved.

        Raises:
          CheckpointError: the checkpoint is unreadable or holds a different model or run layout.
        """
        target = _flatten(state)
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target
        )
        abstract_best = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), best)
        path = os.path.join(self.directory, str(epoch))
        try:
            saved = self._manager.item_metadata(epoch)
            self._check_layout(saved["state"], target, path)
            restored = self._manager.restore(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    best=ocp.args.StandardRestore(abstract_best),
                    history=ocp.args.JsonRestore(),
                ),
            )
        except CheckpointError:
            raise
        except Exception as error:  # Orbax raises many types for damaged files.
            raise CheckpointError(
                f"The checkpoint in {path} is corrupt or incompatible with this config "
                f"({type(error).__name__}: {error}). Delete it or use a new workdir."
            ) from error
        leaves = [restored["state"][key] for key in sorted(target)]
        state = jax.tree.unflatten(jax.tree.structure(state), leaves)
        return state, dict(restored["best"]), list(restored["history"])

    @staticmethod
    def _check_layout(saved: Any, target: dict, path: str) -> None:
        if saved is None or set(saved) != set(target):
            count = "no" if saved is None else len(saved)
            raise CheckpointError(
                f"The checkpoint in {path} holds {count} state arrays; this config's model has "
                f"{len(target)}. It was written by a different model or run layout: delete it or "
                "use a new workdir."
            )
        for key, leaf in target.items():
            shape = tuple(saved[key].shape)
            if shape != tuple(leaf.shape):
                raise CheckpointError(
                    f"The checkpoint in {path} is incompatible with this config: state array {key} "
                    f"has shape {shape} on disk and {tuple(leaf.shape)} here (different model, "
                    "number of classes or num_seeds?). Delete it or use a new workdir."
                )

    def close(self) -> None:
        self._manager.close()
