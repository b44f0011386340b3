"""The loss comparison's tables, plots and per-cell configs (no training: synthetic results)."""

import csv
import os

import numpy as np

from jaxloss.training import comparison
from tests.training.tiny import digits


def _result(loss, accuracy, ece, setup="digits", num_classes=3):
    rng = np.random.default_rng(len(loss))
    probs = rng.dirichlet(np.ones(num_classes), size=(2, 20)).astype(np.float32)
    return comparison.RunResult(
        setup=setup,
        loss=loss,
        metrics={"accuracy": np.array(accuracy), "ece": np.array(ece)},
        per_class_recall=rng.uniform(size=(2, num_classes)),
        test_probs=probs,
        test_labels=rng.integers(0, num_classes, size=20),
        train_class_counts=np.array([30, 10, 3]),
        seconds=1.0,
    )


RESULTS = [
    _result("cross_entropy", [0.90, 0.92], [0.05, 0.07]),
    _result("label_relaxation", [0.91, 0.89], [0.02, 0.04]),
]


def test_markdown_marks_the_best_mean_per_column_in_its_direction():
    table = comparison.markdown_table(RESULTS)
    rows = {
        line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")
    }
    assert "**0.9100 ± 0.0141**" in rows["cross_entropy"]  # higher accuracy is better
    assert "**0.0300 ± 0.0141**" in rows["label_relaxation"]  # lower ECE is better
    assert "**" not in rows["label_relaxation"].split("|")[2]
    assert "mean ± std over 2 seeds" in table


def test_csv_has_mean_std_and_every_seed(tmp_path):
    path = os.path.join(tmp_path, "results.csv")
    comparison.write_csv(RESULTS, path)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    row = next(r for r in rows if r["loss"] == "cross_entropy" and r["metric"] == "accuracy")
    assert float(row["mean"]) == np.float64(0.91)
    np.testing.assert_allclose(float(row["std"]), np.std([0.90, 0.92], ddof=1), rtol=1e-5)
    assert row["values"].split() == ["0.900000", "0.920000"]


def test_report_writes_tables_and_plots(tmp_path):
    table = comparison.write_report(
        RESULTS,
        str(tmp_path),
        calibration_setup="digits",
        calibration_losses=["cross_entropy", "label_relaxation"],
        long_tail_setup="digits",
    )
    written = set(os.listdir(tmp_path))
    assert {"results.md", "results.csv", "bars_accuracy.png", "bars_ece.png"} <= written
    assert {"reliability.png", "per_class_recall.png"} <= written
    with open(os.path.join(tmp_path, "results.md")) as f:
        assert f.read() == table


def test_run_config_fixes_seeds_and_top_k_and_keeps_the_setup():
    config = comparison.run_config(digits, "smooth_topk_svm", num_seeds=2, top_k=2)
    base = digits.get_config("smooth_topk_svm")
    assert config.num_seeds == 2 and config.top_k == 2
    assert config.loss.hyperparameters.k == 2
    assert config.loss.hyperparameters.tau == base.loss.hyperparameters.tau
    assert not config.progress_bar and config.checkpoint_every_epochs == 0
    assert config.optimizer == base.optimizer and config.model == base.model
    ce = comparison.run_config(digits, "cross_entropy", num_seeds=1, top_k=2)
    assert "k" not in ce.loss.hyperparameters
