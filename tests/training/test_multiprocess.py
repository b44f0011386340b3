"""Two processes x two CPU devices through JAX's runtime on 127.0.0.1, started by main.py's flags.

They must compute what one process with four devices computes, write one set of logs, and resume
exactly after both are killed.
"""

import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

import numpy as np
import pytest

from tests.testing import REPO_ROOT

MAIN = os.path.join(REPO_ROOT, "experiments", "main.py")
CONFIG = os.path.join(REPO_ROOT, "experiments", "configs", "digits.py")
NUM_EPOCHS = 4
FLAGS = [
    f"--config={CONFIG}",
    f"--config.num_epochs={NUM_EPOCHS}",
    "--config.num_seeds=2",
    "--config.model.hidden_sizes=(16,)",
    "--config.progress_bar=False",
]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=REPO_ROOT,
    )


def _command(workdir, *extra) -> list[str]:
    return [sys.executable, MAIN, f"--workdir={workdir}", *FLAGS, *extra]


def _start(command, devices: int = 2, stderr=subprocess.PIPE) -> subprocess.Popen:
    # A session of its own: os.killpg signals the Python process itself (and anything it started).
    return subprocess.Popen(
        command,
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def _kill(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Sends ``sig`` to ``process``'s group and checks that the process is gone."""
    os.killpg(process.pid, sig)
    assert process.wait(timeout=30) == -sig
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)  # reaped: no such process any more


def _start_pair(workdir, *extra, flags=((), ())) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        _start(
            _command(
                workdir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                *extra,
                *flags[i],
            )
        )
        for i in range(2)
    ]


def _outputs(processes, timeout: float = 300) -> list[tuple[str, str]]:
    """Every process's (stdout, stderr); a process still running after ``timeout`` s is killed
    (its group) and fails the test."""
    deadline = time.monotonic() + timeout
    try:
        return [p.communicate(timeout=max(1, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            if p.poll() is None:
                _kill(p)
        raise


def _finish(processes) -> list[str]:
    outputs = _outputs(processes)
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def _one_fatal_line(err: str) -> str:
    """The one ``FATAL`` line of a process that stopped, which printed no traceback."""
    assert "Traceback" not in err, err[-3000:]
    lines = re.findall(r"FATAL [^\r\n]*", err)  # (after a progress bar's "\r", on a terminal)
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as file:
        return [json.loads(line) for line in file]


def _results(workdir) -> dict:
    with open(os.path.join(workdir, "results.json")) as file:
        return json.load(file)


def _assert_close(got: dict, want: dict):
    for split in ("validation", "test"):
        for name, value in want["mean"][split].items():
            np.testing.assert_allclose(got["mean"][split][name], value, rtol=1e-5, err_msg=name)


def test_two_processes_equal_one_process_with_four_devices_and_resume_after_sigkill(tmp_path):
    one = tmp_path / "one_process"
    _finish([_start(_command(one), devices=4)])

    two = tmp_path / "two_processes"
    stdouts = _finish(_start_pair(two))
    # Process 0 prints the summary and writes the logs, once; Gloo's connection lines are gone.
    assert "mean ± std" in stdouts[0] and "mean ± std" not in stdouts[1]
    assert "[Gloo]" not in stdouts[0] + stdouts[1]
    records = _metrics(two)
    assert [r["epoch"] for r in records] == list(range(NUM_EPOCHS))
    assert len(os.listdir(two / "tensorboard")) == 1
    for got, want in zip(records, _metrics(one), strict=True):
        for key in ("train/loss", "validation/accuracy", "test/ece", "test/nll"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    _assert_close(_results(two), _results(one))

    # Both processes killed once an epoch is logged (and checkpointed), then the same command.
    killed = tmp_path / "killed"
    processes = _start_pair(killed)
    deadline = time.monotonic() + 300
    log = killed / "metrics.jsonl"
    while not (log.exists() and log.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in processes:
        _kill(p)
    _finish(_start_pair(killed))
    assert [r["epoch"] for r in _metrics(killed)] == list(range(NUM_EPOCHS))
    _assert_close(_results(killed), _results(two))


def test_processes_with_different_configs_stop_before_writing_naming_the_fields(tmp_path):
    workdir = tmp_path / "run"
    processes = _start_pair(
        workdir, flags=((), ("--config.optimizer.learning_rate=0.5", "--config.seed=3"))
    )
    start = time.monotonic()
    outputs = _outputs(processes, timeout=120)
    assert time.monotonic() - start < 60
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 1
        assert "started with different configs" in _one_fatal_line(err)
    # Process 0 names each differing field on a line of its own.
    err = outputs[0][1]
    assert "\n  optimizer.learning_rate: 0.05 on process 0, 0.5 on process 1\n" in err
    assert "\n  seed: 0 on process 0, 3 on process 1" in err
    assert not workdir.exists()


@pytest.mark.parametrize("case", ["process_id", "num_processes", "port_in_use", "wrong_port"])
def test_launch_mistakes_end_every_process_quickly_with_one_line(tmp_path, case):
    port = _free_port()
    flags = [
        [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
        for i in range(2)
    ]
    expected = {  # what each process's FATAL line says
        "process_id": ["did not all connect", "--process_id must be in [0, 1]"],
        "num_processes": [
            "process 1 ended while process 0 waits for it",
            "--num_processes=3, but the coordinator at 127.0.0.1",
        ],
        "port_in_use": ["is in use on this host", "did not all connect"],
        "wrong_port": ["did not all connect", "did not all connect"],
    }[case]
    held = None
    if case == "process_id":
        flags[1][2] = "--process_id=2"
    elif case == "num_processes":
        flags[1][1] = "--num_processes=3"
    elif case == "port_in_use":
        held = socket.create_server(("", port))
    else:
        flags[1][0] = f"--coordinator_address=127.0.0.1:{_free_port()}"
    # 5 s to connect where the launch cannot; where it can, time for two interpreters under load.
    connect = 30 if case == "num_processes" else 5
    timeouts = [f"--initialization_timeout={connect}", "--heartbeat_timeout=3"]
    try:
        start = time.monotonic()
        processes = [_start(_command(tmp_path, *timeouts, *flags[i])) for i in range(2)]
        outputs = _outputs(processes, timeout=90)
        elapsed = time.monotonic() - start
    finally:
        if held is not None:
            held.close()
    assert elapsed < 40  # the 5 s start-up timeout, plus two interpreters starting on 2 cores
    for i, (p, (_, err)) in enumerate(zip(processes, outputs, strict=True)):
        assert p.returncode == 1, err[-3000:]
        assert expected[i] in _one_fatal_line(err), err[-3000:]


def _drain(fd: int, chunks: list) -> None:
    """Reads a terminal's output until every writer closed it."""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # EIO: no writer left
            break
        if not chunk:
            break
        chunks.append(chunk)


def test_a_killed_process_stops_the_others_naming_it(tmp_path):
    # Process 0 writes to a terminal, so it shows the progress bar and updates its loss at every
    # step: that once ran a computation on process 0 alone, which waited forever for process 1.
    workdir = tmp_path / "run"
    port = _free_port()
    terminal, process_side = pty.openpty()
    # 24 x 200 characters: a new terminal has 0 columns, into which tqdm draws nothing.
    fcntl.ioctl(process_side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    processes = [
        _start(
            _command(
                workdir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                "--config.num_epochs=1000",
                "--config.progress_bar=True",
                "--config.log_every_steps=1",
                "--heartbeat_timeout=3",
            ),
            stderr=process_side if i == 0 else subprocess.PIPE,
        )
        for i in range(2)
    ]
    os.close(process_side)
    screen: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(terminal, screen), daemon=True)
    reader.start()
    log = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.exists(), "the run never logged an epoch"
    # SIGTERM (a scheduler's first signal) ends a process; JAX alone would only log it.
    _kill(processes[1], signal.SIGTERM)
    killed = time.monotonic()
    _outputs(processes[:1], timeout=60)
    assert time.monotonic() - killed < 20
    assert processes[0].returncode == 1
    reader.join(timeout=30)
    os.close(terminal)
    err = b"".join(screen).decode(errors="replace")
    assert "loss=" in err  # the bar and its postfix were shown
    assert "process 1 stopped sending heartbeats" in _one_fatal_line(err)


_HANG = """
import sys, time
from jax.experimental import multihost_utils
from jaxloss.training import distributed

process_id, port = int(sys.argv[1]), sys.argv[2]
distributed.initialize(f"127.0.0.1:{port}", 2, process_id, heartbeat_timeout=10, stall_timeout=3)
if process_id == 0:
    multihost_utils.sync_global_devices("a collective that process 1 skips")
else:
    time.sleep(300)
"""


def test_a_hang_is_reported_with_where_each_process_waits(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(_HANG)
    port = _free_port()
    processes = [_start([sys.executable, str(script), str(i), str(port)]) for i in range(2)]
    start = time.monotonic()
    outputs = _outputs(processes, timeout=90)
    assert time.monotonic() - start < 45
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 1, err[-3000:]
        # The FATAL line, then the process's own stack for the record.
        line = _one_fatal_line(err)
        assert "every process has waited without computing for over 3 s" in line
        assert "process 1 at hang.py:11 (<module>)" in line
        assert "process 0 at " in line
    assert "sync_global_devices" in outputs[0][1]


_DRIFT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxloss.training import distributed

process_id, port = int(sys.argv[1]), sys.argv[2]
distributed.initialize(f"127.0.0.1:{port}", 2, process_id, stall_timeout=20)  # a hang ends in 20 s
mesh = Mesh(np.array(jax.devices()), ("data",))
rows = NamedSharding(mesh, P("data"))
step = jax.jit(lambda x: (x + 1, jnp.sum(x)), out_shardings=(rows, NamedSharding(mesh, P())))
x = jax.make_array_from_process_local_data(rows, np.ones((2, 3), np.float32))
for _ in range(300):
    x, total = distributed.keep_in_step(step(x))
    if process_id == 0:  # reads every result; process 1 alone would dispatch ahead
        np.asarray(total.addressable_data(0))
print("done", float(np.asarray(total.addressable_data(0))))
"""


def test_processes_kept_in_step_do_not_deadlock_when_one_waits_for_every_result(tmp_path):
    # Without keep_in_step, XLA's CPU collectives deadlocked within ~100 steps of this (the hang
    # of issue 21 item 7, which heavy load causes the same way); the watchdog would end it.
    script = tmp_path / "drift.py"
    script.write_text(_DRIFT)
    port = _free_port()
    processes = [_start([sys.executable, str(script), str(i), str(port)]) for i in range(2)]
    for p, (out, err) in zip(processes, _outputs(processes, timeout=120), strict=True):
        assert p.returncode == 0, err[-3000:]
        # The last line: what else reaches stdout is the Gloo filter's test's business (below).
        assert out.strip().splitlines()[-1] == f"done {4 * 3 * 300:.1f}"  # 4 x 3 ones + 299


_GLOO_OUTPUT = """
import os
from jaxloss.training import distributed
distributed._silence_gloo()
print("summary 0.93 ± 0.01", flush=True)
# Two device threads' pieces interleaved, as CI once printed them, and a lone piece.
os.write(1, b"[Gloo] Rank [Gloo] Rank 2 is connected to 3 peer ranks. Expected number of "
            b"connected peer ranks is : 3\\n3 is connected to 3 peer ranks. Expected number of "
            b"connected peer ranks is : 3\\n3\\n")
os.write(1, b"Rank 3 is connected to the coordinator\\n")
print("done 3600.0")
"""


def test_gloo_lines_are_dropped_from_stdout_also_when_its_threads_interleave():
    result = subprocess.run(
        [sys.executable, "-c", _GLOO_OUTPUT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "summary 0.93 ± 0.01",
        "Rank 3 is connected to the coordinator",
        "done 3600.0",
    ]


def test_distributed_without_a_cluster_says_so_in_one_line(tmp_path):
    env = {k: v for k, v in _env(1).items() if not k.startswith(("SLURM_", "OMPI_", "TPU_"))}
    result = subprocess.run(
        _command(tmp_path / "run", "--distributed"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "--distributed: JAX found no cluster" in _one_fatal_line(result.stderr)
    assert not (tmp_path / "run").exists()
