"""experiments/compare_benchmarks.py flags regressions between two benchmark runs (no timing);
experiments/benchmark_losses.py --scaling reports every loss's growth in the number of classes;
experiments/benchmark_references.py times the references beside jaxloss."""

import doctest
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

import jaxloss
from tests.testing import REPO_ROOT, run_script

SCRIPT = os.path.join(REPO_ROOT, "experiments", "compare_benchmarks.py")


@pytest.fixture(scope="module")
def compare_benchmarks():
    spec = importlib.util.spec_from_file_location("compare_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(loss, classes, ratio, group="closed_form"):
    ce_ms = 0.5
    return dict(
        group=group,
        loss=loss,
        batch=256,
        classes=classes,
        ms=ratio * ce_ms,
        ce_ms=ce_ms,
        ratio=ratio,
        temp_bytes=0,
    )


def _write(path, rows):
    with open(path, "w") as f:
        json.dump(rows, f)
    return str(path)


@pytest.fixture
def runs(tmp_path):
    """Before/after runs: focal 25 % worse, label relaxation 15 % worse, poly1 faster, one row
    dropped and one added."""
    before = [
        _row("softmax_focal", 1000, 2.0),
        _row("label_relaxation", 1000, 2.0),
        _row("poly1", 1000, 1.5),
        _row("confidence_penalty", 10, 1.2),
    ]
    after = [
        _row("softmax_focal", 1000, 2.5),
        _row("label_relaxation", 1000, 2.3),
        _row("poly1", 1000, 1.0),
        _row("balanced_softmax", 1000, 1.1),
    ]
    return _write(tmp_path / "before.json", before), _write(tmp_path / "after.json", after)


def test_flags_only_rows_over_the_threshold_and_lists_unmatched_rows(
    compare_benchmarks, runs, capsys
):
    assert compare_benchmarks.main(list(runs)) == 1
    out = capsys.readouterr().out
    flagged = out.split("more than 20 % worse:")[1].split("\n\n")[0]
    assert "softmax_focal 256x1000" in flagged
    assert "label_relaxation" not in flagged and "poly1" not in flagged
    assert "| closed_form/softmax_focal 256x1000" in out and "+25.0% |  SLOWER" in out
    assert "+15.0% |\n" in out and "-33.3% |" in out
    only_before = out.split("Only in the first file:")[1].split("\n\n")[0]
    only_after = out.split("Only in the second file:")[1]
    assert "confidence_penalty 256x10" in only_before and "balanced_softmax" not in only_before
    assert "balanced_softmax 256x1000" in only_after


def test_exits_1_on_a_regression_and_0_under_a_looser_threshold(runs):
    """The exit status is what a CI step or a shell script checks."""
    for args, status in (([], 1), (["--threshold=0.3"], 0)):
        result = subprocess.run(
            [sys.executable, SCRIPT, *runs, *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == status, result.stdout + result.stderr


def test_matches_rows_by_group_loss_and_shape(compare_benchmarks, tmp_path):
    """The same loss in two groups, or at two shapes, are separate rows; duplicates are refused."""
    before = {
        ("registered", "poly1", 256, 10): {"ratio": 1.0},
        ("closed_form", "poly1", 256, 10): {"ratio": 1.0},
    }
    after = {
        ("registered", "poly1", 256, 10): {"ratio": 1.0},
        ("closed_form", "poly1", 256, 10): {"ratio": 2.0},
    }
    result = compare_benchmarks.compare(before, after, threshold=0.2)
    assert result["flagged"] == [("closed_form", "poly1", 256, 10)]
    path = _write(tmp_path / "twice.json", [_row("poly1", 10, 1.0)] * 2)
    with pytest.raises(ValueError, match="two rows"):
        compare_benchmarks.load_rows(path)
    assert doctest.testmod(compare_benchmarks).failed == 0


@pytest.mark.slow  # ~20 s: 16 losses compiled at two shapes
def test_scaling_times_every_registered_loss_and_fits_exponents(tmp_path):
    classes = (6, 12)
    out = tmp_path / "scaling.json"
    result = run_script(
        "benchmark_losses.py",
        "--scaling",
        "--batch=4",
        f"--classes={classes[1]},{classes[0]}",
        "--repeats=1",
        f"--json={out}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    names = [n for n in jaxloss.available_losses() if n != "exact"]
    names += ["exact genz trunc=128", "exact quadrature"]  # EXACT's Genz truncated, and in full
    rows = json.loads(out.read_text())
    assert sorted((r["loss"], r["classes"]) for r in rows) == sorted(
        (n, c) for n in names for c in classes
    )
    table = result.stdout.split("Scaling at batch 4")[1]
    assert (
        "| vs CE C=6 | vs CE C=12 | temp MiB C=6 | temp MiB C=12 | a (time) | a - a(CE) |" in table
    )
    for name in names:
        small, large = sorted((r for r in rows if r["loss"] == name), key=lambda r: r["classes"])
        for row in (small, large):
            assert row["group"] == "scaling" and row["batch"] == 4
            assert row["ratio"] == pytest.approx(row["ms"] / row["ce_ms"])
        # Two sizes: the least-squares slope on log-log is the slope through both points.
        slope = math.log(large["ms"] / small["ms"]) / math.log(classes[1] / classes[0])
        assert small["time_exponent"] == large["time_exponent"] == pytest.approx(slope)
        beyond = math.log(large["ratio"] / small["ratio"]) / math.log(2)
        assert small["ratio_exponent"] == pytest.approx(beyond)
        if small["temp_bytes"] > 0:
            growth = math.log(large["temp_bytes"] / small["temp_bytes"]) / math.log(2)
            assert small["memory_exponent"] == pytest.approx(growth)
        else:
            assert small["memory_exponent"] is None
        line = next(li for li in table.splitlines() if li.startswith(f"| {name} "))
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1:3] == [f"{small['ratio']:.2f}x", f"{large['ratio']:.2f}x"]
        assert cells[5:7] == [f"{slope:.2f}", f"{beyond:.2f}"]
        assert ("time" in cells[8]) == (slope > 1.1) and ("vs CE" in cells[8]) == (beyond > 0.1)


def test_references_run_beside_jaxloss_at_a_tiny_shape(tmp_path):
    """Each reference that imports gets its rows (interleaved times, ratios); one that does not
    is named with the reason. Skipped without torch (the `benchmark` extra)."""
    pytest.importorskip("torch")
    out = tmp_path / "references.json"
    result = run_script(
        "benchmark_references.py",
        "--shape=6,12",
        "--rounds=2",
        "--repeats=1",
        f"--json={out}",
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text()) if out.exists() else []
    ran = {row["reference"] for row in rows}
    for name in ("smooth_topk", "exact", "pytopk"):
        assert (name in ran) != (f"{name}: not run (" in result.stdout), name
    if importlib.util.find_spec("pytopk") is not None:
        assert sorted(r["setting"] for r in rows if r["reference"] == "pytopk") == [
            "k = 5, 10 samples",
            "k = 5, 100 samples",
        ]
    for row in rows:
        assert (row["batch"], row["classes"]) == (6, 12)
        assert len(row["jaxloss_rounds_ms"]) == len(row["reference_rounds_ms"]) == 2
        assert row["speedup"] == pytest.approx(row["reference_ms"] / row["jaxloss_ms"])
        assert row["vs_cross_entropy"] == pytest.approx(row["jaxloss_ms"] / row["cross_entropy_ms"])
        if row["reference"] == "smooth_topk":  # deterministic: the two losses agree
            assert row["value_diff"] < 1e-5
        assert f"| {row['batch']} × {row['classes']} |" in result.stdout
