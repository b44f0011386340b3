"""Run logs: metrics as JSON lines, TensorBoard scalars (through tensorboardX) and the progress bar.

Only process 0 writes logs or shows a progress bar; every process of a ``jax.distributed`` run
computes the same metrics, and one copy of them is enough.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping

import jax
import numpy as np
from etils import epath
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

__all__ = ["MetricLogger", "progress_bar"]

# A diverged member of a population logs NaN on purpose (its metrics say it diverged); tensorboardX
# would warn about it at every scalar of every epoch.
logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)


def _json_line(record: Mapping) -> str:
    record = {
        k: v.tolist() if isinstance(v, np.ndarray | np.generic) else v for k, v in record.items()
    }
    return json.dumps(record) + "\n"


class MetricLogger:
    """Per-epoch metrics to ``workdir/metrics.jsonl`` and to TensorBoard (``workdir/tensorboard``).

    Array metrics (one value per seed) become lists in the JSON lines; TensorBoard gets one scalar
    per seed (``tag/seed_i``) and per-class arrays are left to the JSON lines. On processes other
    than 0, the logger writes nothing and creates no file.

    The JSON lines file stays open for the whole run and is flushed after every epoch: an object
    store such as ``gs://`` has no append, and a local file is then as complete as the last epoch
    logged even if the process is killed.

    Args:
      workdir: the run directory, a local path or a URL that ``etils.epath`` opens (``gs://``; its
        TensorBoard events need tensorboardX's own extra dependencies for that store).
      history: epochs already logged by an earlier, interrupted run; the JSON lines file is
        rewritten with exactly these, dropping any epoch logged after the last checkpoint.
      tensorboard: also write TensorBoard events (a sweep of many short runs may skip them).

    Example:
      >>> import tempfile
      >>> workdir = tempfile.mkdtemp()
      >>> logger = MetricLogger(workdir, history=[{"epoch": 0, "loss": np.array([0.5, 0.25])}])
      >>> logger.write({"epoch": 1, "loss": np.array([0.125, 0.0625])})
      >>> logger.close()
      >>> print(logger.path.read_text(), end="")
      {"epoch": 0, "loss": [0.5, 0.25]}
      {"epoch": 1, "loss": [0.125, 0.0625]}
    """

    def __init__(
        self,
        workdir: str | epath.PathLike,
        *,
        history: Iterable[Mapping] = (),
        tensorboard: bool = True,
    ):
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self._file = self._events = None
        if jax.process_index() != 0:
            return
        self._file = self.path.open("w")
        self._file.writelines(_json_line(record) for record in history)
        self._file.flush()
        if tensorboard:
            self._events = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

    def write(self, record: Mapping) -> None:
        """Logs one epoch's record (it must hold an integer ``"epoch"``)."""
        if self._file is None:
            return
        self._file.write(_json_line(record))
        self._file.flush()
        if self._events is None:
            return
        step = int(record["epoch"])
        for key, value in record.items():
            values = np.atleast_1d(np.asarray(value))
            if key == "epoch" or values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
                continue
            for seed, v in enumerate(values):
                self._events.add_scalar(f"{key}/seed_{seed}", float(v), step)
        self._events.flush()

    def close(self) -> None:
        """Closes the files (a no-op on processes other than 0)."""
        if self._file is None:
            return
        self._file.close()
        if self._events is not None:
            self._events.close()


def progress_bar(total: int, *, epoch: int, num_epochs: int, enabled: bool) -> tqdm:
    """A tqdm bar over one epoch's steps, shown only when asked, on process 0, on a terminal."""
    return tqdm(
        total=total,
        desc=f"epoch {epoch + 1}/{num_epochs}",
        unit="step",
        leave=False,
        disable=not (enabled and jax.process_index() == 0 and sys.stderr.isatty()),
    )
