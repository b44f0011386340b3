"""Multi-process runs that agree before they work, fail fast, and say why.

JAX's runtime (``jax.distributed.initialize``) connects the processes and then stays silent about
most mistakes: a wrong coordinator port or a missing process waits out a 300 s start-up timeout, a
dead process aborts the others with a C++ stack trace (after 100 s of missed heartbeats), and
processes started with different configs train without complaint. This module wraps it:

- :func:`initialize` checks the launch arguments before connecting (``process_id`` in range, the
  coordinator's port free on process 0), ends a start-up that does not complete within
  ``initialization_timeout`` with one line naming what to check, and starts a watchdog.
- The watchdog (one thread per process) beats through the coordinator's key-value store. Process
  0 notices a process that stopped beating, and every process notices a dead process 0, within
  ``heartbeat_timeout``; a process that ends early (an error only it saw) is noticed by the others
  once they wait for it; and when every process has waited without computing, in the same place,
  for ``stall_timeout`` (a collective that one process skipped: a hang), each says where it waits.
  In each case every process prints one ``FATAL`` line naming the process and exits.
- :func:`check_same_config` compares a digest of each process's config and stops every process
  on a mismatch, process 0 listing the differing fields.
- :func:`keep_in_step` keeps the processes of a CPU run from dispatching compiled steps ahead of
  each other, which deadlocks XLA's CPU collectives.

All of this is a no-op in a single-process run.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

import jax
import numpy as np
from jax._src import distributed as _jax_distributed  # its client: the key-value store
from jax.experimental import multihost_utils

__all__ = ["LaunchError", "check_same_config", "initialize", "keep_in_step"]

# Defaults for a cluster: processes of a SLURM job or a TPU pod start within a minute or two of
# each other; a heartbeat missed for 30 s is a dead process (or host), not a busy one (heartbeats
# come from a thread of their own); a whole run idle in one place for 5 min is a hang, not a slow
# write to shared storage.
INITIALIZATION_TIMEOUT = 120
HEARTBEAT_TIMEOUT = 30
STALL_TIMEOUT = 300
# How many processes with another config process 0 describes field by field.
_MAX_LISTED = 3
_PREFIX = "jaxloss/"


class LaunchError(RuntimeError):
    """A multi-process launch that cannot work (arguments out of range, a port in use).

    Example:
      >>> initialize("localhost:12345", num_processes=2, process_id=5)
      Traceback (most recent call last):
        ...
      jaxloss.training.distributed.LaunchError: --process_id must be in [0, 1] for --num_processes=2, got 5.
    """


def _fatal(message: str) -> None:
    """Prints one ``FATAL`` line and ends this process at once, without JAX's shutdown barrier
    (which would wait for the processes that are gone)."""
    print(f"FATAL {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def _check_arguments(coordinator_address: str, num_processes: Any, process_id: Any) -> int:
    """The coordinator's port; raises LaunchError naming a launch argument that cannot work."""
    if not isinstance(num_processes, int) or num_processes < 1:
        raise LaunchError(f"--num_processes must be a positive integer, got {num_processes!r}.")
    if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise LaunchError(
            f"--process_id must be in [0, {num_processes - 1}] for --num_processes="
            f"{num_processes}, got {process_id!r}."
        )
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(
            f"--coordinator_address must be HOST:PORT (process 0's host, a port in [1, 65535]), "
            f"got {coordinator_address!r}."
        )
    return int(port)


def _check_port_free(port: int) -> None:
    """Raises LaunchError if process 0 cannot bind the coordinator's port (JAX binds all
    interfaces); without this check the others would join whatever listens there."""
    family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
    try:
        with socket.create_server(
            ("", port), family=family, dualstack_ipv6=family == socket.AF_INET6
        ):
            pass
    except OSError as error:
        raise LaunchError(
            f"The coordinator's port {port} (--coordinator_address) is in use on this host "
            f"({os.strerror(error.errno)}): another run's coordinator? Pick a free port for process 0."
        ) from None


# Gloo prints "[Gloo] Rank R is connected to N peer ranks. Expected number of connected peer ranks
# is : E" piece by piece from each local device's thread, so two threads' pieces can interleave
# into lines such as "3 is connected to ...": a line made of nothing but those pieces is Gloo's.
_GLOO_LINE = (
    rb"(?:\s*(?:\[Gloo\] Rank|\d+|is connected to|peer ranks\.|"
    rb"Expected number of connected peer ranks is :))+\s*"
)


def _silence_gloo() -> None:
    """Drops the ``[Gloo] Rank ... connected`` lines that the CPU collectives print on stdout.

    Gloo writes them from C++ and has no switch, so this process's stdout goes through a small
    filter process, which also survives a crash of this one and drains what it wrote.
    """
    sys.stdout.flush()
    read, write = os.pipe()
    code = (
        "import re, sys\n"
        f"gloo = re.compile({_GLOO_LINE!r})\n"
        "for line in sys.stdin.buffer:\n"
        "    if not gloo.fullmatch(line):\n"
        "        sys.stdout.buffer.write(line); sys.stdout.buffer.flush()\n"
    )
    # The filter inherits the real stdout; it exits when every writer of the pipe is gone.
    subprocess.Popen([sys.executable, "-S", "-c", code], stdin=read, close_fds=True)
    os.close(read)
    os.dup2(write, sys.stdout.fileno())
    os.close(write)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = INITIALIZATION_TIMEOUT,
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
    stall_timeout: int = STALL_TIMEOUT,
    show_gloo: bool = False,
) -> None:
    """``jax.distributed.initialize`` that fails fast and says why, and a watchdog.

    With no address, number or id, JAX detects them (SLURM, Cloud TPU, Open MPI).

    Args:
      coordinator_address: ``HOST:PORT`` of process 0's coordinator.
      num_processes: the number of processes N.
      process_id: this process's index, 0 .. N-1.
      initialization_timeout: seconds for all N processes to connect; past them every waiting
        process ends with one line naming what to check.
      heartbeat_timeout: seconds after which a process that stopped beating (killed, crashed,
        its host lost) ends the run; every process exits naming it.
      stall_timeout: seconds that every process may wait without computing in one place before
        the run is declared hung; each process prints where it waits and exits.
      show_gloo: keep the ``[Gloo] Rank ... connected`` lines of the CPU collectives.

    Raises:
      LaunchError: a launch argument that cannot work, or process 0's port is in use. Errors
        found while connecting end the process (see above) instead of raising.

    Example:
      Every process of a run calls it first, with its own ``process_id`` (process 0 hosts the
      coordinator); a mistake is named before anything connects:

      >>> initialize("localhost:12345", num_processes=2, process_id=2)
      Traceback (most recent call last):
        ...
      jaxloss.training.distributed.LaunchError: --process_id must be in [0, 1] for --num_processes=2, got 2.
    """
    for name, value in (
        ("initialization_timeout", initialization_timeout),
        ("heartbeat_timeout", heartbeat_timeout),
        ("stall_timeout", stall_timeout),
    ):
        if not isinstance(value, int) or value < 1:
            raise LaunchError(f"--{name} must be a positive number of seconds, got {value!r}.")
    explicit = (coordinator_address, num_processes, process_id) != (None, None, None)
    if explicit:
        port = _check_arguments(coordinator_address or "", num_processes, process_id)
        if process_id == 0:
            _check_port_free(port)
    where = coordinator_address or "the address JAX detected"
    who = f"process {process_id}" if explicit else "this process"
    # JAX aborts with a C++ stack trace when its own start-up timeout passes: ours ends first.
    deadline = threading.Timer(
        initialization_timeout,
        _fatal,
        [
            f"{who}: the {num_processes or 'N'} processes did not all connect to the "
            f"coordinator at {where} within --initialization_timeout={initialization_timeout} "
            "s. Check that process 0 runs there, that every process has the same "
            "--coordinator_address and --num_processes, and that each --process_id in "
            "0..N-1 is used once."
        ],
    )
    deadline.daemon = True
    deadline.start()
    if not show_gloo:
        _silence_gloo()
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            initialization_timeout=initialization_timeout + 60,
            # JAX's own detection is the fallback: the watchdog's comes first, naming the process.
            heartbeat_timeout_seconds=2 * heartbeat_timeout + 10,
        )
    except ValueError as error:  # what JAX says when it detects no cluster
        raise LaunchError(
            f"--distributed: JAX found no cluster to read the coordinator, the number of "
            f"processes and this process's id from ({error}): run under SLURM, Open MPI or on a "
            "Cloud TPU, or give --coordinator_address, --num_processes and --process_id."
        ) from None
    finally:
        deadline.cancel()
    # JAX's preemption notifier catches SIGTERM and only logs it, so `kill`, `timeout` or a
    # scheduler's SIGTERM could not stop a process (a hung one above all): SIGTERM ends it again.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if jax.process_count() > 1:
        watchdog = _Watchdog(heartbeat_timeout, stall_timeout)
        watchdog.start()
        sys.excepthook = watchdog.excepthook
    if num_processes is not None and jax.process_count() != num_processes:
        raise LaunchError(
            f"--num_processes={num_processes}, but the coordinator at {where} runs "
            f"{jax.process_count()} processes (process 0's --num_processes): give every process "
            "the same."
        )


def keep_in_step(outputs: Any) -> Any:
    """Waits for ``outputs`` of a compiled step in a multi-process run on CPUs; returns them.

    XLA's CPU collectives (Gloo) can deadlock when one process dispatches steps ahead of another
    (asynchronous dispatch lets a process queue many): a 2 x 2 run where one process waited for
    each step's result and the other did not hung within 100 steps, and heavy load makes the
    same drift (issue 21, item 7). Waiting for every step keeps at most one in flight on each
    process. GPUs and TPUs, whose collectives queue in order, keep asynchronous dispatch.

    Example:
      >>> step = jax.jit(lambda x: x + 1)
      >>> keep_in_step(step(np.zeros(2))).tolist()  # in a single-process run, returned as is
      [1.0, 1.0]
    """
    if jax.process_count() > 1 and jax.default_backend() == "cpu":
        jax.block_until_ready(outputs)
    return outputs


def _main_thread_location() -> tuple[Any, str]:
    """The main thread's innermost frame (its identity, to tell a wait from progress) and where
    it is: the innermost line, and the innermost of jaxloss's or the scripts' own."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return None, "exiting"
    inner = frame
    own = None
    while frame is not None and own is None:
        path = frame.f_code.co_filename
        if f"{os.sep}jaxloss{os.sep}" in path or f"{os.sep}experiments{os.sep}" in path:
            own = frame
        frame = frame.f_back

    def describe(f) -> str:
        return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno} ({f.f_code.co_name})"

    text = describe(inner)
    if own is not None and own is not inner:
        text += f" called from {describe(own)}"
    return (id(inner), inner.f_lineno), text


class _Watchdog(threading.Thread):
    """Beats every ``heartbeat_timeout / 10`` s through the coordinator's key-value store and ends
    the run when a process is dead, ended early, or every process waits (see the module doc).

    Keys: ``beat/<i>`` (a counter, how long process i has waited, where), ``exited/<i>``
    (``exit``: process i is exiting normally; ``abort``: it stopped the run) and ``abort`` (the
    message every process prints).
    """

    def __init__(self, heartbeat_timeout: int, stall_timeout: int):
        super().__init__(name="jaxloss-watchdog", daemon=True)
        self._client = _jax_distributed.global_state.client
        self._index, self._count = jax.process_index(), jax.process_count()
        self._heartbeat_timeout, self._stall_timeout = heartbeat_timeout, stall_timeout
        self._interval = max(0.5, heartbeat_timeout / 10)
        self._exiting = False
        self._done = threading.Event()
        # Runs before JAX's own shutdown (atexit runs in reverse order of registration).
        atexit.register(self._exit)

    def excepthook(self, kind, error, trace) -> None:
        """``sys.excepthook``: a collective that failed because another process is gone (Gloo
        sees its connection close) leaves the explanation to the watchdog, which names the
        process within the heartbeat timeout; other errors print their traceback as usual."""
        text = str(error)
        if any(sign in text for sign in ("Gloo", "UNAVAILABLE", "Connection closed")):
            time.sleep(self._heartbeat_timeout + 4 * self._interval)  # the watchdog ends it
            self._stop_run(
                f"process {self._index}: a collective with the other processes failed "
                f"({text.strip().splitlines()[-1]}): another process ended or its host is "
                "unreachable.",
                tell=True,
            )
        sys.__excepthook__(kind, error, trace)

    def _exit(self) -> None:
        """Tells the others that this process is exiting and waits for them: JAX's shutdown that
        follows is a barrier of all processes, which would wait minutes for a process that will
        never get there (it stopped the run, or waits for this one in a collective and stops
        once it sees this key). The watchdog keeps beating meanwhile."""
        self._exiting = True
        try:
            self._client.key_value_set(
                f"{_PREFIX}exited/{self._index}", "exit", allow_overwrite=True
            )
            while True:
                exited = dict(self._client.key_value_dir_get(f"{_PREFIX}exited/"))
                if "abort" in exited.values():
                    self._leave()  # the process that stopped the run said why
                if len(exited) == self._count:
                    break
                time.sleep(self._interval)
        except Exception:  # The coordinator is gone: no shutdown barrier to join.
            os._exit(1)
        self._done.set()

    def run(self) -> None:
        try:
            self._watch()
        except Exception as error:  # Any failure to reach the coordinator means it is gone.
            self._stop_run(
                f"process {self._index} lost the coordinator (process 0): "
                f"{str(error).splitlines()[0]}. Process 0 died or its host is unreachable."
            )

    def _stop_run(
        self, message: str, *, stall: bool = False, tell: bool = False, dead: int | None = None
    ) -> None:
        """Ends this process with ``message`` (``tell``: first tells every process to stop;
        ``dead``: a process that will not answer)."""
        if tell:
            try:
                self._client.key_value_set(
                    f"{_PREFIX}abort",
                    json.dumps({"message": message, "stall": stall}),
                    allow_overwrite=True,
                )
            except Exception:  # The coordinator is gone; the others notice that themselves.
                pass
        if not self._exiting:  # (an exiting process already said why it ends)
            print(f"FATAL {message}", file=sys.stderr, flush=True)
            frame = sys._current_frames().get(threading.main_thread().ident)
            if stall and frame is not None:
                print("Where the main thread waits:", file=sys.stderr)
                traceback.print_stack(frame, file=sys.stderr)
        self._leave(dead)

    def _leave(self, dead: int | None = None) -> None:
        """Ends this process, saying so (``exited/<i>`` = ``abort``). Process 0 first waits a few
        beats for every other process to say so too: its exit takes the coordinator down, which
        JAX's runtime answers in the others with a C++ abort before they could print why."""
        try:
            self._client.key_value_set(
                f"{_PREFIX}exited/{self._index}", "abort", allow_overwrite=True
            )
            deadline = time.monotonic() + 3 * self._interval + 2
            while self._index == 0 and time.monotonic() < deadline:
                exited = dict(self._client.key_value_dir_get(f"{_PREFIX}exited/"))
                if list(exited.values()).count("abort") == self._count - (dead is not None):
                    break
                time.sleep(0.1)
        except Exception:  # The coordinator is gone: nobody is left to tell.
            pass
        sys.stdout.flush()
        os._exit(1)

    def _watch(self) -> None:
        beat, stalled_since, last = 0, time.monotonic(), (None, 0.0)
        # Per watched process, its last beat seen here and when it changed (this host's clock).
        watched = [p for p in range(self._count) if p != self._index]
        if self._index:
            watched = [0]  # process 0 watches everyone, the others watch process 0
        seen = {p: (None, time.monotonic()) for p in watched}
        while not self._done.wait(self._interval):
            now, cpu = time.monotonic(), time.process_time()
            location, where = _main_thread_location()
            # Waiting: the main thread sat in the same line and the process barely computed.
            if location != last[0] or cpu - last[1] > 0.05 * self._interval:
                stalled_since = now
            last = (location, cpu)
            beat += 1
            self._client.key_value_set(
                f"{_PREFIX}beat/{self._index}",
                json.dumps([beat, now - stalled_since, where]),
                allow_overwrite=True,
            )
            abort = self._try_get(f"{_PREFIX}abort")
            if abort is not None:
                self._stop_run(**json.loads(abort))
            if self._index == 0:
                beats = {
                    int(key.rsplit("/", 1)[1]): json.loads(value)
                    for key, value in self._client.key_value_dir_get(f"{_PREFIX}beat/")
                }
            else:
                value = self._try_get(f"{_PREFIX}beat/0")
                beats = {} if value is None else {0: json.loads(value)}
            exited = dict(self._client.key_value_dir_get(f"{_PREFIX}exited/"))
            for p in watched:
                value = beats.get(p, [None])[0]
                if value != seen[p][0]:
                    seen[p] = (value, now)
                elif now - seen[p][1] > self._heartbeat_timeout:
                    self._stop_run(
                        f"process {p} stopped sending heartbeats {now - seen[p][1]:.0f} s ago "
                        f"(--heartbeat_timeout={self._heartbeat_timeout}): it was killed, "
                        "crashed or lost its host. Stopping every process.",
                        tell=True,
                        dead=p,
                    )
            if self._exiting:
                continue
            gone = sorted(int(key.rsplit("/", 1)[1]) for key in exited)
            if gone and now - stalled_since > 2 * self._interval:
                self._stop_run(
                    f"process {gone[0]} ended while process {self._index} waits for it at "
                    f"{where}: see process {gone[0]}'s log for why. Stopping every process.",
                    tell=True,
                )
            if self._index == 0 and len(beats) == self._count:
                waits = {p: beats[p][1] for p in beats}
                waits[0] = now - stalled_since
                if min(waits.values()) > self._stall_timeout:
                    places = "; ".join(
                        f"process {p} at {beats[p][2] if p else where}" for p in sorted(beats)
                    )
                    self._stop_run(
                        f"every process has waited without computing for over "
                        f"{self._stall_timeout} s (--stall_timeout), a hang: {places}.",
                        stall=True,
                        tell=True,
                    )

    def _try_get(self, key: str) -> str | None:
        try:
            return self._client.key_value_try_get(key)
        except Exception as error:  # NOT_FOUND is the usual answer.
            if "NOT_FOUND" in str(error) or "not found" in str(error).lower():
                return None
            raise


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON value's leaves keyed by dotted paths.

    >>> _flat({"a": {"b": 1, "c": [2]}, "d": None})
    {'a.b': 1, 'a.c': [2], 'd': None}
    """
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def check_same_config(config_json: dict) -> None:
    """Raises ValueError on every process unless all processes run the same config.

    Each process hashes ``config_json`` (what ``config.json`` records); the digests are gathered
    (a small collective), and only on a mismatch do the differing processes send their config,
    through the coordinator, for process 0's message: one line per differing field.

    Args:
      config_json: this process's config as a JSON-able dict.

    Example:
      >>> check_same_config({"seed": 0, "loss": {"name": "exact"}})  # one process: nothing to compare
    """
    if jax.process_count() == 1:
        return
    text = json.dumps(config_json, sort_keys=True)
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest))
    others = [p for p in range(len(digests)) if not np.array_equal(digests[p], digests[0])]
    if not others:
        return
    client = _jax_distributed.global_state.client
    listed = others[:_MAX_LISTED]
    if jax.process_index() in listed:
        client.key_value_set(f"{_PREFIX}config/{jax.process_index()}", text)
    lines = []
    if jax.process_index() == 0:
        mine = _flat(config_json)
        for p in listed:
            theirs = _flat(
                json.loads(client.blocking_key_value_get(f"{_PREFIX}config/{p}", 60_000))
            )
            for field in sorted(set(mine) | set(theirs)):
                if json.dumps(mine.get(field)) != json.dumps(theirs.get(field)):
                    lines.append(
                        f"\n  {field}: {json.dumps(mine.get(field))} on process 0, "
                        f"{json.dumps(theirs.get(field))} on process {p}"
                    )
    more = f" and {len(others) - len(listed)} more" if len(others) > len(listed) else ""
    raise ValueError(
        f"the processes were started with different configs (process "
        f"{', '.join(map(str, listed))}{more} differ{'s' if len(others) == 1 else ''} from "
        "process 0; every process must run the same command)" + "".join(lines)
    )
