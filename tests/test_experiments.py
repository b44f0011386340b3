"""The experiment scripts run end to end: the comparison (the main job) and the benchmark."""

import csv
import json
import os

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
