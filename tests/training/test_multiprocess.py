"""Two processes x two CPU devices through JAX's runtime on 127.0.0.1, started by main.py's flags.

They must compute what one process with four devices computes, write one set of logs, and resume
exactly after both are killed.
"""

import json
import os
import signal
import socket
import subprocess
import sys
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
    # JAX catches SIGTERM: `timeout -k` follows up with SIGKILL.
    return [
        "timeout",
        "-k",
        "10",
        "300",
        sys.executable,
        MAIN,
        f"--workdir={workdir}",
        *FLAGS,
        *extra,
    ]


def _start_pair(workdir) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        subprocess.Popen(
            _command(
                workdir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _finish(processes) -> list[str]:
    outputs = [p.communicate(timeout=330) for p in processes]
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


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
    subprocess.run(_command(one), env=_env(4), check=True, capture_output=True, timeout=330)

    two = tmp_path / "two_processes"
    stdouts = _finish(_start_pair(two))
    # Process 0 prints the summary and writes the logs, once.
    assert "mean ± std" in stdouts[0] and "mean ± std" not in stdouts[1]
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
        p.send_signal(signal.SIGKILL)
        p.wait()
    _finish(_start_pair(killed))
    assert [r["epoch"] for r in _metrics(killed)] == list(range(NUM_EPOCHS))
    _assert_close(_results(killed), _results(two))
