"""Misuse of the training harness is named before any work starts (issues 20, 21): one line naming
the field, the value and what is allowed, and a workdir that nothing was written to."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from jaxloss.training import ConfigError, lock, train_and_evaluate
from jaxloss.training.checks import check_layout
from jaxloss.training.lock import LOCK_NAME, WorkdirInUseError, workdir_lock
from tests.training.tiny import tiny_config


def _refused(config, workdir, match: str) -> str:
    """Runs ``config`` and checks it is refused with ``match`` and the workdir left unwritten."""
    with pytest.raises(ConfigError, match=match) as info:
        train_and_evaluate(config, str(workdir))
    message = str(info.value)
    assert "\n" not in message
    assert not os.path.exists(workdir), os.listdir(workdir)
    return message


def _with(config, **fields):
    """``config`` with dotted ``fields`` set (e.g. ``**{"optimizer.momentum": 5.0}``)."""
    for path, value in fields.items():
        *parents, name = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return config


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("optimizer.learning_rate", -0.1, r"must be in \(0.0, inf\] and finite"),
        ("optimizer.learning_rate", float("inf"), r"must be in \(0.0, inf\] and finite"),
        ("optimizer.weight_decay", -1.0, r"must be in \[0.0, inf\]"),
        ("optimizer.momentum", 5.0, r"must be in \[0.0, 1.0\)"),
        ("optimizer.decay_factor", 0.0, r"must be in \(0.0, inf\]"),
        ("optimizer.gradient_clip_norm", -1.0, r"must be in \(0.0, inf\]"),
        ("optimizer.schedule", "cosin", r"must be one of .*\(did you mean 'cosine'\?\)"),
        ("optimizer.name", "adamw", r"must be one of sgd, adam"),
        ("checkpoint_every_epochs", -1, "must be a non-negative integer"),
        ("num_epochs", 0, "must be a positive integer"),
        ("batch_size", 0, "must be a positive integer"),
        ("batch_size", 5000, r"\(5000\) is larger than the training split \(\d+ examples"),
        ("num_seeds", -2, "must be a positive integer"),
        ("seed", -5, "must be a non-negative integer"),
        ("log_every_steps", 0, "must be a positive integer"),
        ("steps_per_call", 0, "must be a positive integer"),
        ("selection", "first", "must be one of best, last"),
        ("data.label_noise", 1.5, r"must be in \[0.0, 1.0\]"),
        ("data.imbalance_factor", 0.5, r"must be in \[1.0, inf\]"),
        ("data.worker_count", -1, "must be a non-negative integer"),
    ],
)
def test_fields_out_of_their_domain_are_refused_naming_field_value_and_domain(
    tmp_path, field, value, allowed
):
    message = _refused(_with(tiny_config(), **{field: value}), tmp_path / "run", allowed)
    assert f"{field} " in message
    assert f"got {value!r}" in message or f"{field} ({value!r})" in message


@pytest.mark.parametrize(
    "loss, name, good, bad",
    [
        ("label_relaxation", "alpha", 0.1, 1.5),
        ("topk_svm", "alpha", 1.0, -1.0),
        ("confidence_penalty", "beta", 0.3, -0.2),
    ],
)
def test_population_members_get_the_checks_and_messages_of_single_values(
    tmp_path, loss, name, good, bad
):
    single = _refused(
        _with(tiny_config(loss), **{f"loss.hyperparameters.{name}": bad}), tmp_path / "a", name
    )
    config = tiny_config(loss)
    config.population = {name: (good, bad)}
    member = _refused(config, tmp_path / "b", name)
    # The same check: the message differs only in naming the member instead of the field.
    assert member == single.replace(f"loss.hyperparameters.{name}", f"population.{name}[1]")
    config = tiny_config()
    config.optimizer.learning_rate = -0.1
    single = _refused(config, tmp_path / "c", "learning_rate")
    config = tiny_config()
    config.population = {"learning_rate": (0.1, 0.05, -0.1)}
    member = _refused(config, tmp_path / "d", "learning_rate")
    assert member == single.replace("optimizer.learning_rate", "population.learning_rate[2]")


def test_a_bad_value_leaves_the_workdir_unwritten_so_the_corrected_run_starts(tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config("label_relaxation", num_epochs=1)
    config.loss.hyperparameters.alpha = -0.5
    _refused(config, workdir, r"loss.hyperparameters.alpha must be in \[0.0, 1.0\), got -0.5")
    _refused(tiny_config(seed=-5), workdir, "seed must be a non-negative integer, got -5")
    config.loss.hyperparameters.alpha = 0.2
    assert train_and_evaluate(config, str(workdir))["history"]
    assert json.load(open(workdir / "config.json"))["loss"]["hyperparameters"] == {"alpha": 0.2}


def test_model_parallel_and_batch_sizes_are_checked_against_the_process_layout(tmp_path):
    config = tiny_config(model_parallel=4, batch_size=8, eval_batch_size=8)
    # many_classes' default on 2 processes x 2 devices: a class group would span two processes.
    with pytest.raises(ConfigError, match=r"model_parallel \(4\) must divide each process's 2 dev"):
        check_layout(config, devices_per_process=[2, 2])
    check_layout(config, devices_per_process=[4])
    config.model_parallel = 1
    with pytest.raises(ConfigError, match=r"batch_size \(6\) must be a multiple of the 4 data"):
        check_layout(_with(config, batch_size=6), devices_per_process=[2, 2])
    with pytest.raises(ConfigError, match="the same number of devices, got"):
        check_layout(config, devices_per_process=[2, 1])
    # many_classes on this process's one device: refused before its 100,000 examples are drawn.
    from configs import many_classes

    _refused(many_classes.get_config(), tmp_path / "run", r"model_parallel \(4\) must divide the 1")


def test_workdir_that_is_a_file_under_a_file_or_read_only_is_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        train_and_evaluate(tiny_config(), str(file))
    with pytest.raises(ConfigError, match=f"is under {file}, which is a file"):
        train_and_evaluate(tiny_config(), str(file / "run"))
    if os.geteuid() == 0:  # root writes through permission bits: take a read-only file system
        read_only = "/sys/jaxloss_test_run"
    else:
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
    with pytest.raises(ConfigError, match="cannot be (created|written)"):
        train_and_evaluate(tiny_config(), str(read_only))


def test_a_second_run_in_a_workdir_stops_naming_the_first_and_a_stale_lock_is_taken_over(
    tmp_path,
):
    # A first run trains in this process (another thread)...
    first = concurrent.futures.ThreadPoolExecutor(1).submit(
        train_and_evaluate,
        tiny_config(num_epochs=5, checkpoint_every_epochs=0, tensorboard=False),
        str(tmp_path),
    )
    while not os.path.exists(tmp_path / LOCK_NAME) and not first.done():
        time.sleep(0.01)
    with pytest.raises(WorkdirInUseError, match=f"in use by process {os.getpid()} on "):
        train_and_evaluate(tiny_config("label_relaxation", num_epochs=1), str(tmp_path))
    assert not first.done(), "the first run ended before the second started: lengthen it"
    assert len(first.result()["history"]) == 5
    assert json.load(open(tmp_path / "config.json"))["loss"]["name"] == "cross_entropy"
    assert not os.path.exists(tmp_path / LOCK_NAME)
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    # ... or in another live process on this host.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "earlier"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(lock))
    try:
        with pytest.raises(WorkdirInUseError, match=f"in use by process {sleeper.pid} on "):
            train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path))
        assert sorted(os.listdir(tmp_path)) == [LOCK_NAME]
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its process is gone: the lock is stale, the next run takes it over and releases it.
    assert train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path))["history"]
    assert not os.path.exists(tmp_path / LOCK_NAME)


def test_runs_started_together_in_one_workdir_get_its_lock_once(tmp_path, monkeypatch):
    start = threading.Barrier(8)
    outcomes = []
    create = lock._create

    def slow_create(path, record):
        # The window between creating the lock and recording it as held, widened: a thread of
        # this process that judged the new lock then took it for a stale one of this pid.
        created = create(path, record)
        if created:
            time.sleep(0.05)
        return created

    monkeypatch.setattr(lock, "_create", slow_create)

    others_tried = threading.Event()

    def run():
        start.wait()
        try:
            with workdir_lock(tmp_path):
                outcomes.append("held")
                # Held until the other seven have tried, however slowly a loaded machine runs them.
                others_tried.wait(timeout=10)
        except WorkdirInUseError:
            outcomes.append("refused")
            if outcomes.count("refused") == 7:
                others_tried.set()

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["held"] + ["refused"] * 7
    assert os.listdir(tmp_path) == []  # released, no draft left behind
