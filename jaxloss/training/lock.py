"""One run per workdir: a lock file naming its holder, taken before the run writes anything.

Two runs in one workdir would mix their configs, metrics and checkpoints. The first run creates
``<workdir>/run.lock`` (its process id, host and start time) atomically, as a hard link of a
complete file, so a lock is never seen half written; a second run finds it and stops, naming the
first. The lock goes when the run ends, however it ends, short of its process being killed: a lock
whose process is gone from this host is stale and the next run takes it over. Of a multi-process
run, process 0 takes the lock and every process learns whether it got it.

Local and network file systems (NFS) get the atomic creation; on other storage (``gs://``) the lock
is written after checking that there is none, which two runs started within moments can both pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from jaxloss.training.checks import ConfigError

__all__ = ["LOCK_NAME", "WorkdirInUseError", "workdir_lock"]

LOCK_NAME = "run.lock"
# Locks this process holds: a lock naming this process that is not among them is left over from
# an earlier process that had the same id (a restarted container's process 1).
_HELD: set[str] = set()
# Serializes this process's acquisitions and releases: a lock of this process's pid is stale only
# if no thread holds it, and a thread that has just created it must be recorded before another
# thread judges it (two threads of one process took one workdir's lock both at once).
_MUTEX = threading.Lock()


class WorkdirInUseError(RuntimeError):
    """Another run holds the workdir's lock.

    Example:
      >>> import tempfile
      >>> workdir = epath.Path(tempfile.mkdtemp())
      >>> with workdir_lock(workdir), workdir_lock(workdir):  # doctest: +ELLIPSIS
      ...     pass
      Traceback (most recent call last):
        ...
      jaxloss.training.lock.WorkdirInUseError: ... is in use by process ... on ...
    """


def _is_local(path: epath.Path) -> bool:
    return "://" not in str(path)


def _read(path: epath.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(owner: dict, path: epath.Path) -> bool:
    """Whether ``owner``'s process is known to be gone (only a process on this host can be)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    if owner["pid"] == os.getpid():
        return str(path) not in _HELD
    return not _alive(owner["pid"])


def _create(path: epath.Path, record: str) -> bool:
    """Creates ``path`` holding ``record`` unless it exists; whether it did."""
    if not _is_local(path):
        if path.exists():
            return False
        path.write_text(record)
        return True
    draft = path.with_name(f"{LOCK_NAME}.{uuid.uuid4().hex}")  # unique per attempt
    draft.write_text(record)
    try:
        os.link(draft, path)  # atomic, and fails if the lock exists
        return True
    except FileExistsError:
        return False
    finally:
        draft.unlink()


def _take_over(path: epath.Path, owner: dict) -> None:
    """Removes the stale lock of ``owner``: of several runs doing so at once, one removes it and
    the others find the winner's lock."""
    if not _is_local(path):
        path.unlink(missing_ok=True)
        return
    moved = path.with_name(f"{LOCK_NAME}.stale.{uuid.uuid4().hex}")
    try:
        os.rename(path, moved)  # atomic: one run moves the stale lock
    except FileNotFoundError:
        return
    if _read(moved) != owner:
        # Between reading the stale lock and moving it, another run took it over: put its back.
        with contextlib.suppress(FileExistsError):
            os.link(moved, path)
    moved.unlink()


def _acquire(path: epath.Path) -> None:
    record = json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
    )
    try:
        with _MUTEX:
            for _ in range(3):
                if _create(path, record):
                    _HELD.add(str(path))
                    return
                owner = _read(path)
                if owner is not None and _stale(owner, path):
                    _take_over(path, owner)
                    continue
                break
            owner = _read(path)
    except OSError as error:
        raise ConfigError(
            f"workdir {path.parent} cannot be written: {error.strerror or error}."
        ) from error
    holder = (
        f"process {owner['pid']} on {owner['host']} (started {owner.get('started', '?')})"
        if owner
        else "another run"
    )
    raise WorkdirInUseError(
        f"{path.parent} is in use by {holder}: wait for it to end or use another workdir (if that "
        f"run is gone, delete {path})."
    )


def _release(path: epath.Path) -> None:
    with _MUTEX:
        _HELD.discard(str(path))
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def workdir_lock(workdir: epath.Path) -> Iterator[None]:
    """Holds ``workdir``'s lock while the block runs; call it on every process.

    Raises:
      WorkdirInUseError: another run holds the lock (the message names its process and host).
      ConfigError: the workdir cannot be written (read-only).

    Example:
      >>> import tempfile
      >>> workdir = epath.Path(tempfile.mkdtemp())
      >>> with workdir_lock(workdir):
      ...     sorted(p.name for p in workdir.iterdir())
      ['run.lock']
      >>> list(workdir.iterdir())
      []
    """
    path = workdir / LOCK_NAME
    error = None
    if jax.process_index() == 0:
        try:
            try:
                workdir.mkdir(parents=True, exist_ok=True)
            except OSError as caught:
                raise ConfigError(
                    f"workdir {workdir} cannot be created: {caught.strerror or caught}."
                ) from caught
            _acquire(path)
        except (WorkdirInUseError, ConfigError) as caught:
            error = caught
    if jax.process_count() > 1:
        # Every process stops if process 0 did not get the lock.
        got = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not got and error is None:
            error = WorkdirInUseError(f"{workdir}: process 0 could not lock it (see its message).")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if jax.process_index() == 0:
            _release(path)
