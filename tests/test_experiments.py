"""The experiment scripts run end to end: the comparison (the main job) and the benchmark."""

import csv
import json
import os
import socket
import subprocess
import sys

from tests import testing
from tests.testing import REPO_ROOT


def _run(args, cwd):
    script, *rest = args
    result = testing.run_script(os.path.basename(script), *rest, cwd=cwd)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_compare_tunes_then_writes_the_ranking_tables_and_plots(tmp_path):
    stdout = _run(
        [
            os.path.join(REPO_ROOT, "experiments", "compare.py"),
            f"--workdir={tmp_path}",
            "--config.setups=('digits_lt',)",
            "--config.losses=('cross_entropy', 'balanced_softmax')",
            "--config.num_seeds=1",
            "--config.tuning.trials=2",
            "--config.calibration_setup=digits_lt",
        ],
        cwd=tmp_path,
    )
    assert "## Ranking" in stdout and "| digits_lt | balanced_accuracy |" in stdout
    written = set(os.listdir(tmp_path))
    assert {"results.md", "results.csv", "results.json", "sensitivity.png"} <= written
    with open(os.path.join(tmp_path, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    accuracy = {r["loss"]: float(r["mean"]) for r in rows if r["metric"] == "balanced_accuracy"}
    assert set(accuracy) == {"cross_entropy", "balanced_softmax"}
    assert all(0.5 < a <= 1.0 for a in accuracy.values())
    with open(os.path.join(tmp_path, "results.json")) as f:
        records = json.load(f)
    for record in records:
        assert record["tuning"]["metric"] == "balanced_accuracy"
        assert len(record["tuning"]["validation_scores"]) == 2


def test_benchmark_prints_and_writes_every_row(tmp_path):
    path = os.path.join(tmp_path, "rows.json")
    stdout = _run(
        [
            os.path.join(REPO_ROOT, "experiments", "benchmark_losses.py"),
            "--groups=closed_form",
            "--repeats=1",
            f"--json={path}",
        ],
        cwd=tmp_path,
    )
    with open(path) as f:
        rows = json.load(f)
    assert len(rows) == 15  # 5 losses x 3 shapes
    assert all(r["ms"] > 0 and r["ce_ms"] > 0 and r["temp_bytes"] >= 0 for r in rows)
    assert stdout.count("| label_relaxation") == 3


def test_benchmark_help_lists_its_groups(tmp_path):
    stdout = _run(
        [os.path.join(REPO_ROOT, "experiments", "benchmark_losses.py"), "--help"], tmp_path
    )
    assert "Groups: registered, closed_form, smooth_topk, noised_topk, exact." in stdout


# The command line's mistakes: one FATAL line (and at most one hint line), exit status 1, nothing
# written, before JAX compiles anything.
DIGITS = os.path.join(REPO_ROOT, "experiments", "configs", "digits.py")


def _check_arguments(capsys, *args):
    """``cli.check_config_arguments`` on ``main.py args``: (rewritten argv, None) or (None, the
    FATAL lines)."""
    import cli  # experiments/ is on sys.path once tests.training.tiny is imported

    try:
        return cli.check_config_arguments(["main.py", *args], "config", DIGITS), None
    except SystemExit as exit:
        assert exit.code == 1
        return None, capsys.readouterr().err.splitlines()


def test_config_argument_mistakes_are_one_fatal_line_and_a_hint(capsys):
    import tests.training.tiny  # noqa: F401 - puts experiments/ on sys.path

    for args, fatal, hint in [
        (
            [f"--config={DIGITS}:label_relax"],
            "unknown loss 'label_relax' (did you mean 'label_relaxation'?).",
            "the losses: cross_entropy,",
        ),
        (["--config=configs/nope.py"], "there is no config file 'configs/nope.py'", "digits,"),
        (["--config.num-seeds=5"], "--config.num-seeds: config fields are named with underscores",
         "--config.num_seeds"),
        (["--config.num_seed=5"], "the config has no field 'num_seed' (did you mean 'num_seeds'?)",
         "its fields: batch_size,"),
        (["--config.optimizer.lr=0.1"], "'optimizer' has no field 'lr'", "learning_rate"),
    ]:  # fmt: skip
        argv, lines = _check_arguments(capsys, *args)
        assert argv is None and len(lines) == 2, lines
        assert lines[0].startswith("FATAL ") and fatal in lines[0], lines
        assert lines[1].startswith("Hint: ") and hint in lines[1], lines


def test_config_loss_name_builds_that_losses_own_config_or_is_refused(capsys, tmp_path):
    import tests.training.tiny  # noqa: F401 - puts experiments/ on sys.path

    # EXACT's recipe (its hyperparameters, schedule, gradient normalizer) comes with its name, and
    # an override of its own hyperparameter then applies.
    argv, _ = _check_arguments(
        capsys, "--workdir=w", "--config.loss.name=exact", "--config.loss.hyperparameters.margin=1"
    )
    assert argv == ["main.py", f"--config={DIGITS}:exact", "--workdir=w",
                    "--config.loss.hyperparameters.margin=1"]  # fmt: skip
    # A config file that cannot build a loss's config refuses to rename its loss.
    fixed = tmp_path / "fixed.py"
    fixed.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    return ml_collections.ConfigDict({'loss': {'name': 'cross_entropy'}})\n"
    )
    argv, lines = _check_arguments(capsys, f"--config={fixed}", "--config.loss.name=exact")
    assert argv is None and len(lines) == 2, lines
    assert lines[0].startswith("FATAL --config.loss.name=exact would rename the loss alone")
    assert lines[1] == (
        "Hint: build the config for the loss: --config=<config file>:exact, with a "
        "get_config(loss) such as experiments/configs/digits.py's."
    )


def _main(*args, cwd=REPO_ROOT):
    result = testing.run_script("main.py", *args, cwd=cwd, timeout=300)
    return result, result.stderr.strip().splitlines()


def test_main_trains_exact_by_config_loss_name_as_by_its_config_string(tmp_path):
    from tests.training.tiny import digits  # experiments/configs/digits.py

    # The case: EXACT's recipe used to be dropped (0.10 test accuracy instead of 0.84).
    result, lines = _main(
        "--workdir", str(tmp_path), "--config.loss.name=exact", "--config.num_epochs=1",
        "--config.num_seeds=1", "--config.model.hidden_sizes=(16,)",
        "--config.checkpoint_every_epochs=0", "--config.loss.hyperparameters.margin=1.0",
    )  # fmt: skip
    assert result.returncode == 0, lines[-5:]
    ran = json.load(open(tmp_path / "config.json"))
    want = json.loads(digits.get_config("exact").to_json_best_effort())
    want["loss"]["hyperparameters"]["margin"] = 1.0
    for field in ("loss", "optimizer"):
        assert ran[field] == want[field], field
    assert ran["model"]["head"] == want["model"]["head"]
    assert ran["optimizer"]["gradient_normalizer"] is True


def test_main_reports_flag_workdir_and_checkpoint_mistakes_in_one_fatal_line(tmp_path):
    result, lines = _main("--config", DIGITS)
    assert result.returncode == 1 and lines[0].startswith("FATAL flag --workdir=None"), lines
    assert len(lines) == 2
    result, lines = _main("--workdir", str(tmp_path / "a"), "--num_seeds=5")
    assert result.returncode == 1, lines
    assert lines == ["FATAL unknown flag --num_seeds.",
                     "Hint: config fields take the --config. prefix: --config.num_seeds=5"]  # fmt: skip
    # A workdir that holds another run's config: the CheckpointError in one line.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"seed": 7}))
    result, lines = _main("--workdir", str(tmp_path / "b"))
    assert result.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"FATAL {tmp_path / 'b'} holds a run with a different config")
    assert sorted(os.listdir(tmp_path / "b")) == ["config.json"]
    # A workdir that another live run on this host holds.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "earlier"}
        (tmp_path / "b" / "run.lock").write_text(json.dumps(lock))
        result, lines = _main("--workdir", str(tmp_path / "b"))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"FATAL {tmp_path / 'b'} is in use by process {sleeper.pid} on ")
