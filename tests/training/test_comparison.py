"""The comparison's protocol pieces and its report (tables, ranking, tuning record, plots)."""

import csv
import importlib
import json
import os

import numpy as np
import pytest

import jaxloss
from jaxloss import metrics
from tests.training.tiny import digits, tiny_config

# experiments/ is on sys.path once tests.training.tiny is imported, as under experiments/compare.py.
comparison = importlib.import_module("comparison")
report = importlib.import_module("report")


def _cell(loss, accuracy, ece, setup="digits", num_classes=3, tuning=None):
    rng = np.random.default_rng(len(loss))
    probs = rng.dirichlet(np.ones(num_classes), size=(2, 20)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=20)
    bins = [np.stack(metrics.calibration_bins(p, labels, n_bins=15)) for p in probs]
    return comparison.Cell(
        setup=setup,
        loss=loss,
        selection_metric="accuracy",
        metrics={"accuracy": np.array(accuracy), "ece": np.array(ece)},
        per_class_recall=rng.uniform(size=(2, num_classes)),
        test_bins=np.asarray(bins, np.float64),
        train_class_counts=np.array([30, 10, 3]),
        seconds=1.0,
        tuning=tuning,
    )


TUNING = comparison.Tuning(
    grid={"learning_rate": [0.01, 0.1, 1.0], "alpha": [0.1, 0.1, 0.1]},
    scores=[0.8, 0.95, float("nan")],
    metric="accuracy",
    selected={"learning_rate": 0.1, "alpha": 0.1},
    seconds=1.0,
)
CELLS = [
    _cell("cross_entropy", [0.90, 0.92], [0.05, 0.07]),
    _cell("label_relaxation", [0.91, 0.89], [0.02, 0.04], tuning=TUNING),
    _cell("focal", [0.97, 0.98], [0.06, 0.06]),
]


def test_markdown_marks_the_best_mean_per_column_in_its_direction():
    table = report.markdown_table(CELLS)
    rows = {
        line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")
    }
    assert "**0.9750 ± 0.0071**" in rows["focal"]  # higher accuracy is better
    assert "**0.0300 ± 0.0141**" in rows["label_relaxation"]  # lower ECE is better
    assert "mean ± std over 2 seeds" in table


def test_ranking_names_the_best_loss_its_margin_and_whether_it_beats_the_spread():
    text = report.ranking(CELLS)
    accuracy = next(line for line in text.splitlines() if "| accuracy |" in line)
    assert "| focal |" in accuracy and "+0.0650" in accuracy and "yes" in accuracy
    ece = next(line for line in text.splitlines() if "| ece |" in line)
    # 0.02 better than cross-entropy, but the seeds spread by sqrt(2) * 0.0141.
    assert "| label_relaxation |" in ece and "+0.0300" in ece and "yes (spread 0.0200)" in ece


def test_csv_json_and_tuning_record(tmp_path):
    report.write_csv(CELLS, os.path.join(tmp_path, "results.csv"))
    with open(os.path.join(tmp_path, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["loss"] == "cross_entropy" and r["metric"] == "accuracy")
    assert float(row["mean"]) == np.float64(0.91)
    np.testing.assert_allclose(float(row["std"]), np.std([0.90, 0.92], ddof=1), rtol=1e-5)
    report.write_json(CELLS, os.path.join(tmp_path, "results.json"))
    with open(os.path.join(tmp_path, "results.json")) as f:
        records = json.load(f)
    tuned = next(r for r in records if r["loss"] == "label_relaxation")
    assert tuned["tuning"]["selected"] == {"learning_rate": 0.1, "alpha": 0.1}
    assert len(tuned["tuning"]["validation_scores"]) == 3
    text = report.tuning_table(CELLS)
    assert "**learning_rate=0.1, alpha=0.1: 0.9500**" in text  # a NaN trial never wins


def test_report_writes_tables_and_plots(tmp_path):
    text = report.write_report(
        CELLS,
        str(tmp_path),
        calibration_setup="digits",
        calibration_losses=["cross_entropy", "label_relaxation"],
        long_tail_setup="digits",
        header="# header\n",
    )
    written = set(os.listdir(tmp_path))
    assert {"results.md", "results.csv", "results.json", "bars_accuracy.png"} <= written
    assert {"reliability.png", "per_class_recall.png", "sensitivity.png"} <= written
    with open(os.path.join(tmp_path, "results.md")) as f:
        assert f.read() == text
    assert text.index("## Ranking") < text.index("### digits") < text.index("## Tuning")


def test_run_config_fixes_seeds_and_top_k_and_keeps_the_setup():
    config = comparison.run_config(digits, "smooth_topk_svm", num_seeds=2, top_k=2)
    base = digits.get_config("smooth_topk_svm")
    assert config.num_seeds == 2 and config.top_k == 2
    assert config.loss.hyperparameters.k == 2
    assert config.loss.hyperparameters.tau == base.loss.hyperparameters.tau
    assert not config.progress_bar and config.checkpoint_every_epochs == 0
    assert config.optimizer == base.optimizer and config.model == base.model


@pytest.mark.parametrize("name", jaxloss.available_losses())
def test_every_loss_gets_the_same_number_of_trials_over_two_decades_of_learning_rate(name):
    spec = jaxloss.loss_spec(name)
    grid = comparison.trial_grid(spec, 0.05, trials=9, decades=2.0)
    assert {len(values) for values in grid.values()} == {9}
    rates = np.unique(grid["learning_rate"])
    np.testing.assert_allclose([rates.min(), rates.max()], [0.005, 0.5])
    assert set(grid) == {"learning_rate", *spec.tuned[:1]}
    for hyperparameter in spec.tuned[:1]:
        values = np.asarray(grid[hyperparameter])
        interval = spec.ranges[hyperparameter]
        assert interval.low <= values.min() < values.max() <= interval.high


def test_tuning_selects_on_validation_and_reports_fresh_seeds(tmp_path):
    import ml_collections

    tuning = ml_collections.ConfigDict({"trials": 2, "learning_rate_decades": 2.0, "seed": 100})
    setup = type("Setup", (), {"get_config": staticmethod(lambda loss: tiny_config(loss))})
    cell = comparison.run_cell(
        "tiny", setup, "cross_entropy", num_seeds=2, top_k=2, tuning=tuning, workdir=str(tmp_path)
    )
    scores = cell.tuning.scores
    assert len(scores) == 2 and cell.tuning.metric == "accuracy"
    chosen = int(np.argmax(scores))
    assert cell.tuning.selected["learning_rate"] == cell.tuning.grid["learning_rate"][chosen]
    assert cell.metrics["accuracy"].shape == (2,)  # the reported seeds, not the tuning seed
    with open(os.path.join(tmp_path, "final", "config.json")) as f:
        final = json.load(f)
    assert final["seed"] == 0 and final["population"]["learning_rate"] == [
        pytest.approx(cell.tuning.selected["learning_rate"])
    ]


def test_readme_table_is_replaced_between_its_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{report.README_START}\nold table\n{report.README_END}\noutro\n")
    report.update_readme(CELLS, str(path))
    text = path.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    table = text[text.index(report.README_START) : text.index(report.README_END)]
    assert "| loss | digits accuracy | digits ece |" in table
    assert "| focal | **0.9750 ± 0.0071** | 0.0600 ± 0.0000 |" in table
