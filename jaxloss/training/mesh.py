"""The device mesh of a run: the batch over ``'data'``, the heads' classes over ``'model'``."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

__all__ = ["make_mesh"]


def make_mesh(devices: Any = None, *, model_parallel: int = 1) -> Mesh:
    """A ``('data', 'model')`` mesh over ``devices`` (default: all devices).

    The batch is split over ``'data'``; the heads' class axis (their weights, optimizer moments
    and the logits) over ``'model'``, of size ``model_parallel`` (1: every device holds every
    class). Consecutive devices share a batch shard, so a process's devices hold a contiguous
    block of ``'data'``.

    Example:
      >>> import jax
      >>> mesh = make_mesh()  # the batch over every device, each holding every class
      >>> mesh.axis_names, mesh.shape["model"], mesh.shape["data"] == jax.device_count()
      (('data', 'model'), 1, True)
    """
    devices = np.asarray(jax.devices() if devices is None else devices).ravel()
    if model_parallel < 1 or devices.size % model_parallel:
        raise ValueError(
            f"model_parallel={model_parallel} must be a positive divisor of the {devices.size} "
            "devices."
        )
    return Mesh(devices.reshape(-1, model_parallel), ("data", "model"))
