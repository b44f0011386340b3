"""The comparison's protocol (selection over tuning seeds, shared runs, determinism), its verdicts
and its report (tables, "which loss when", plots)."""

import csv
import importlib
import json
import os
import re

import matplotlib
import ml_collections
import numpy as np
import pytest
from scipy import stats

import jaxloss
from jaxloss import metrics
from tests import testing
from tests.training.tiny import digits, tiny_config

matplotlib.use("Agg")

# experiments/ is on sys.path once tests.training.tiny is imported, as under experiments/compare.py.
comparison = importlib.import_module("comparison")
report = importlib.import_module("report")
compare = importlib.import_module("compare")


def _tuning(scores, selected, grid=None, stable=None):
    grid = grid or {"learning_rate": [0.01, 0.1, 1.0], "alpha": [0.1, 0.1, 0.1]}
    scores = np.asarray(scores, np.float64)
    stable = [True] * len(scores) if stable is None else stable
    order = comparison.rank_trials(
        scores, np.ones_like(scores), stable, grid["learning_rate"], higher=True
    )
    return comparison.Tuning(
        grid=grid,
        seeds=[100, 101],
        scores=scores.tolist(),
        nll=np.ones_like(scores).tolist(),
        stable=stable,
        order=order,
        metric="accuracy",
        selected=selected,
        seconds=1.0,
    )


def _cell(loss, accuracy, ece, setup="digits", num_classes=3, tuning=None, metric="accuracy"):
    rng = np.random.default_rng(len(loss))
    probs = rng.dirichlet(np.ones(num_classes), size=(len(accuracy), 20)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=20)
    bins = [np.stack(metrics.calibration_bins(p, labels, n_bins=15)) for p in probs]
    values = {"accuracy": np.array(accuracy), "ece": np.array(ece)}
    if metric != "accuracy":
        values[metric] = np.array(accuracy)
    return comparison.Cell(
        setup=setup,
        loss=loss,
        selection_metric=metric,
        metrics=values,
        per_class_recall=rng.uniform(size=(len(accuracy), num_classes)),
        test_bins=np.asarray(bins, np.float64),
        train_class_counts=np.array([30, 10, 3]),
        seconds=1.0,
        tuning=tuning,
        curves={
            "train/loss": np.full((2, len(accuracy)), 0.5),
            "validation/accuracy": np.full((2, len(accuracy)), 0.8),
        },
    )


TUNING = _tuning([[0.8, 0.82], [0.95, 0.93], [np.nan, 0.9]], {"learning_rate": 0.1, "alpha": 0.1})
CELLS = [
    _cell("cross_entropy", [0.90, 0.92, 0.91], [0.05, 0.07, 0.06]),
    _cell("label_relaxation", [0.92, 0.90, 0.91], [0.02, 0.04, 0.03], tuning=TUNING),
    _cell("focal", [0.97, 0.98, 0.975], [0.06, 0.061, 0.059]),
    _cell("poly1", [0.80, 0.82, 0.81], [0.05, 0.07, 0.06]),
]


def test_rank_trials_puts_unstable_last_then_mean_then_nll_then_the_smaller_rate():
    scores = np.array([[0.9, 0.9], [0.95, 0.85], [0.99, 0.99], [0.9, 0.9], [0.8, 0.8]])
    assert np.mean(scores[1]) != np.mean(scores[0])  # float64: 0.95 + 0.85 < 0.9 + 0.9
    nll = np.array([[0.3, 0.3], [0.2, 0.2], [0.1, 0.1], [0.3, 0.3], [0.5, 0.5]])
    rates = [0.1, 0.05, 0.01, 0.02, 0.1]
    stable = [True, True, False, True, True]
    order = comparison.rank_trials(scores, nll, stable, rates, higher=True)
    # 0, 1 and 3 tie on the mean (0.9): 1 has the lowest NLL; 0 and 3 tie on NLL too, and the
    # smaller learning rate (trial 3) wins; the unstable trial 2 loses despite its 0.99.
    assert order == [1, 3, 0, 4, 2]
    # Lower is better (e.g. ECE): the order of the means reverses; NaN ranks last.
    scores[4] = np.nan
    assert comparison.rank_trials(scores, nll, [True] * 5, rates, higher=False) == [1, 3, 0, 2, 4]


def test_unstable_models_flags_divergence_and_collapse():
    def record(loss, accuracy):
        return {
            "train/loss": np.asarray(loss, np.float64),
            "validation/accuracy": np.asarray(accuracy, np.float64),
            "validation/per_class_recall": np.zeros((4, 10)),
        }

    # Models: fine; diverged (NaN loss in epoch 1); collapsed late (0.9 -> 0.3); never learned.
    history = [
        record([1.0, 1.0, 1.0, 2.3], [0.5, 0.5, 0.9, 0.12]),
        record([0.5, np.nan, 0.5, 2.3], [0.9, 0.5, 0.6, 0.15]),
        record([0.4, 0.4, 3.0, 2.3], [0.92, 0.6, 0.3, 0.18]),
    ]
    scores = np.array([0.92, 0.9, 0.9, 0.18])
    np.testing.assert_array_equal(
        comparison.unstable_models(history, scores), [False, True, True, True]
    )


def test_paired_difference_is_the_paired_t_interval():
    base, cell = CELLS[0], CELLS[2]
    d = report.paired_difference(cell, base, "accuracy")
    reference = stats.ttest_rel(cell.metrics["accuracy"], base.metrics["accuracy"])
    interval = reference.confidence_interval(0.95)
    np.testing.assert_allclose([d.low, d.high], [interval.low, interval.high], rtol=1e-10)
    assert d.verdict == "better"
    assert report.paired_difference(CELLS[3], base, "accuracy").verdict == "worse"
    # Lower ECE is better: label relaxation's 0.03 lower ECE on every seed.
    assert report.paired_difference(CELLS[1], base, "ece").verdict == "better"
    # Seed-to-seed differences that straddle 0.
    noisy = _cell("noisy", [0.95, 0.87, 0.92], [0.05, 0.07, 0.06])
    assert report.paired_difference(noisy, base, "accuracy").verdict == "no detectable difference"
    single = report.paired_difference(_cell("one", [0.99], [0.1]), _cell("b", [0.9], [0.1]), "ece")
    assert single.verdict == "too few seeds to tell" and np.isnan(single.low)


def _focal_cell(gamma):
    tuning = _tuning(
        [[0.8, 0.8], [0.9, 0.9], [0.7, 0.7]],
        {"learning_rate": 0.1, "gamma": gamma},
        grid={"learning_rate": [0.01, 0.1, 1.0], "gamma": [gamma] * 3},
    )
    return _cell("focal", [0.9, 0.9], [0.1, 0.1], tuning=tuning)


def test_flags_read_degenerate_and_edge_selections_off_the_spec():
    spec = jaxloss.loss_spec("focal")
    low = spec.ranges["gamma"].low  # 0: focal is cross-entropy there
    assert any("degenerate" in note for note in report.flags(_focal_cell(low)))
    assert any("lowest of its range" in note for note in report.flags(_focal_cell(low)))
    middle = report.flags(_focal_cell(2.5))
    assert not any("degenerate" in note or "range" in note for note in middle)
    # The middle of the learning-rate grid is not flagged; its ends are.
    assert not any("learning rate" in note for note in middle)
    assert report.flags(CELLS[1]) == []  # alpha and the learning rate inside their ranges
    tuning = _tuning([[0.8, 0.8], [0.7, 0.7], [0.9, 0.9]], {"learning_rate": 1.0, "alpha": 0.1})
    edge = report.flags(_cell("label_relaxation", [0.9, 0.9], [0.1, 0.1], tuning=tuning))
    assert any("learning rate 1 is the highest tried" in note for note in edge)


def test_results_md_opens_with_which_loss_when_from_the_verdicts(tmp_path):
    text = report.write_report(
        CELLS,
        str(tmp_path),
        calibration_setup="digits",
        calibration_losses=["cross_entropy", "label_relaxation"],
        long_tail_setup="digits",
        floor_setup="digits",
        floor=0.9,
        header="# header\n",
    )
    with open(os.path.join(tmp_path, "results.md")) as f:
        assert f.read() == text
    order = ["## Which loss when", "## How to read this", "## Ranking", "### digits", "## Every"]
    positions = [text.index(heading) for heading in order]
    assert positions == sorted(positions)
    advice = text[text.index("## Which loss when") : text.index("## How to read this")]
    assert "for accuracy: **focal**" in advice  # the detectably better one
    assert "for calibration (ECE): **label_relaxation**" in advice
    assert "Detectably worse: poly1" in advice
    # poly1's mean test accuracy 0.81 is below the floor: its curves are in the report.
    floor = text[text.index("## Below 0.90") : text.index("### digits")]
    assert "**poly1**" in floor and "seed 0: training loss per epoch" in floor
    assert "**focal**" not in floor
    written = set(os.listdir(tmp_path))
    assert {"results.md", "results.csv", "results.json", "bars_ranking.png"} <= written
    assert {"reliability.png", "per_class_recall.png", "sensitivity.png"} <= written


def test_the_main_job_writes_what_its_config_asks(tmp_path):
    config = importlib.import_module("configs.compare").get_config()
    config.calibration_setup = config.long_tail_setup = config.floor_setup = "digits"
    text = compare.write_report(config, CELLS, str(tmp_path), header="# header\n")
    # poly1's mean test accuracy 0.81 is below the config's floor (0.90) on its floor setup.
    assert f"## Below {config.floor:.2f} test accuracy on digits" in text and "**poly1**" in text
    assert {"reliability.png", "per_class_recall.png"} <= set(os.listdir(tmp_path))


def test_csv_json_and_every_trial(tmp_path):
    report.write_csv(CELLS, os.path.join(tmp_path, "results.csv"))
    with open(os.path.join(tmp_path, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["loss"] == "cross_entropy" and r["metric"] == "accuracy")
    assert float(row["mean"]) == pytest.approx(0.91)
    report.write_json(CELLS, os.path.join(tmp_path, "results.json"))
    with open(os.path.join(tmp_path, "results.json")) as f:
        records = json.load(f)
    tuned = next(r for r in records if r["loss"] == "label_relaxation")
    assert tuned["tuning"]["selected"] == {"learning_rate": 0.1, "alpha": 0.1}
    assert np.shape(tuned["tuning"]["validation_scores"]) == (3, 2)
    assert tuned["versus_baseline"]["ece"]["verdict"] == "better"
    assert "seconds" not in json.dumps(records)  # timings would make two runs differ
    text = report.tuning_table(CELLS)
    # Trial 1 has the best mean (0.94); the NaN trial never wins.
    assert "**learning_rate=0.1, alpha=0.1: 0.9500/0.9300 → 0.9400" in text
    assert "0.8000/0.8200 → 0.8100 (nll 1.000, #2)" in text


def test_bar_panels_use_each_setups_metric_clip_error_bars_and_draw_the_baseline(tmp_path):
    import matplotlib.pyplot as plt

    cells = [
        _cell("cross_entropy", [0.99, 1.0, 0.97], [0.01, 0.02, 0.0]),
        _cell("focal", [1.0, 1.0, 0.96], [0.0, 0.0, 0.05]),
        _cell("cross_entropy", [0.8, 0.7, 0.9], [0.1, 0.1, 0.1], "lt", metric="balanced_accuracy"),
        _cell("focal", [0.8, 0.8, 0.9], [0.1, 0.1, 0.1], "lt", metric="balanced_accuracy"),
    ]
    saved = {}
    original = plt.Figure.savefig
    plt.Figure.savefig = lambda fig, *a, **k: saved.setdefault("figure", fig)
    try:
        report.plot_metric_bars(cells, "ranking", str(tmp_path / "bars.png"))
    finally:
        plt.Figure.savefig = original
    figure = saved["figure"]
    labels = [ax.get_ylabel() for ax in figure.axes]
    assert labels == ["test accuracy", "test balanced accuracy"]
    for ax in figure.axes:
        for line in ax.lines:
            # Error bar segments end inside [0, 1]; the dashed line is cross-entropy's mean.
            assert np.all(np.asarray(line.get_ydata()) <= 1.0 + 1e-12)
        assert any(line.get_linestyle() == "--" for line in ax.get_lines())
    plt.close(figure)


def _cielab(colours):
    """sRGB (D65) to CIELAB, written out from the standard's formulas."""
    rgb = np.array([matplotlib.colors.to_rgb(c) for c in colours])
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    )
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], -1)


def _closest_pair(colours):
    lab = _cielab(colours)
    distances = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return distances.min()


def test_palette_has_fourteen_distinguishable_colours_and_a_second_cue():
    assert len(report.PALETTE) >= 14
    # Every pair, and each against the baseline's black, at least 25 CIELAB units apart; the
    # old tab20 palette's first 14 colours (its light/dark pairs) are not.
    assert _closest_pair([*report.PALETTE, "black"]) > 25
    tab20 = [matplotlib.colormaps["tab20"](i) for i in range(14)]
    assert _closest_pair(tab20) < 25
    losses = list(jaxloss.available_losses())
    styles = [report._style(losses, name) for name in losses]
    assert len({s["color"] for s in styles}) == len(losses)
    assert len({s["marker"] for s in styles}) == len(losses)


def test_reliability_legend_sits_below_the_bars_and_counts_are_shown():
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=200)
    labels = np.random.default_rng(1).integers(0, 3, size=200)
    figure = metrics.reliability_diagram(probs, labels, n_bins=10)
    ax = figure.axes[0]
    figure.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0  # entirely below the axes
    counts = np.asarray(metrics.calibration_bins(probs, labels, n_bins=10).count)
    shown = sorted(int(t.get_text()) for t in ax.texts)
    assert shown == sorted(int(n) for n in counts[counts > 0])


def test_run_config_fixes_seeds_and_top_k_and_keeps_the_setup():
    config = comparison.run_config(
        digits, "smooth_topk_svm", num_seeds=2, top_k=2, overrides={"num_epochs": 2}
    )
    base = digits.get_config("smooth_topk_svm")
    assert config.num_seeds == 2 and config.top_k == 2 and config.num_epochs == 2
    assert config.loss.hyperparameters.k == 2
    assert config.loss.hyperparameters.tau == base.loss.hyperparameters.tau
    assert not config.progress_bar and config.checkpoint_every_epochs == 0
    assert config.optimizer == base.optimizer and config.model == base.model
    # Each evaluation split in one batch, without the padding of the setup's 512 rows.
    splits = jaxloss.training.load_datasets(config.data)
    largest = max(len(splits["validation"]), len(splits["test"]))
    assert largest <= config.eval_batch_size < min(largest + 8, base.eval_batch_size)


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


def _setup(selection):
    def get_config(loss):
        config = tiny_config(loss)
        config.selection = selection
        return config

    return type("Setup", (), {"get_config": staticmethod(get_config)})


def test_tuning_seeds_select_on_their_mean_and_setups_differing_in_selection_share_a_run(tmp_path):
    tuning = ml_collections.ConfigDict(
        {"trials": 2, "learning_rate_decades": 2.0, "seed": 100, "seeds": 2}
    )
    best, last = comparison.run_loss(
        {"best": _setup("best"), "last": _setup("last")},
        "cross_entropy",
        num_seeds=2,
        top_k=2,
        tuning=tuning,
        workdir=str(tmp_path),
    )
    # One tuning run (the setups train the same models), read at each setup's epochs.
    assert os.path.isdir(tmp_path / "best" / "cross_entropy" / "tuning")
    assert not os.path.exists(tmp_path / "last" / "cross_entropy" / "tuning")
    with open(tmp_path / "best" / "cross_entropy" / "tuning" / "config.json") as f:
        tuned = json.load(f)
    assert tuned["num_seeds"] == 2 and tuned["seed"] == 100  # seeds 100, 101
    with open(tmp_path / "best" / "cross_entropy" / "tuning" / "metrics.jsonl") as f:
        final_epoch = [json.loads(line) for line in f][-1]
    np.testing.assert_allclose(
        np.ravel(last.tuning.scores), final_epoch["validation/accuracy"], rtol=1e-6
    )
    for cell in (best, last):
        scores = np.asarray(cell.tuning.scores)
        assert scores.shape == (2, 2)
        means = scores.mean(axis=1)
        stable = np.asarray(cell.tuning.stable)
        winner = cell.tuning.best
        if stable.any():
            assert stable[winner] and means[winner] == means[stable].max()
        assert cell.tuning.selected["learning_rate"] == cell.tuning.grid["learning_rate"][winner]
        assert cell.metrics["accuracy"].shape == (2,)
        with open(tmp_path / cell.setup / "cross_entropy" / "final" / "config.json") as f:
            final = json.load(f)
        # The report seeds 0, 1: disjoint from the tuning seeds.
        assert final["seed"] == 0 and final["num_seeds"] == 2
        assert final["population"]["learning_rate"] == [
            pytest.approx(cell.tuning.selected["learning_rate"])
        ]


def _small_compare_config():
    config = importlib.import_module("configs.compare").get_config()
    config.setups = ("digits", "digits_last")
    config.losses = ("cross_entropy", "focal")
    config.num_seeds = 2
    config.tuning.trials = 2
    config.overrides = ml_collections.ConfigDict(
        {"num_epochs": 2, "batch_size": 128, "model": {"hidden_sizes": (16,)}}
    )
    return config


@pytest.mark.slow
def test_two_runs_of_the_comparison_write_the_same_results_json(tmp_path):
    texts = []
    for run in ("a", "b"):
        workdir = str(tmp_path / run)
        config = _small_compare_config()
        config.losses = ("focal",)  # a tuned hyperparameter besides the learning rate
        cells = compare.run(config, workdir, verbose=False)
        report.write_json(cells, os.path.join(workdir, "results.json"))
        with open(os.path.join(workdir, "results.json")) as f:
            texts.append(f.read())
    assert texts[0] == texts[1]
    records = json.loads(texts[0])
    assert [(r["setup"], r["loss"]) for r in records] == [
        ("digits", "focal"),
        ("digits_last", "focal"),
    ]
    assert np.shape(records[0]["tuning"]["validation_scores"]) == (2, 2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("setups", ("digit",), "unknown name 'digit' (did you mean 'digits'?)"),
        ("losses", ("focall",), "unknown name 'focall' (did you mean 'focal'?)"),
    ],
)
def test_unknown_names_are_refused_before_any_work(tmp_path, field, value, message):
    config = _small_compare_config()
    config[field] = value
    with pytest.raises(jaxloss.training.ConfigError, match=re.escape(message)):
        compare.run(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_bad_trials_and_overlapping_seeds_are_refused(tmp_path):
    config = _small_compare_config()
    config.tuning.trials = -1
    with pytest.raises(jaxloss.training.ConfigError, match="tuning.trials must be an integer >= 0"):
        compare.run(config, str(tmp_path))
    config = _small_compare_config()
    config.tuning.seed = 1
    with pytest.raises(jaxloss.training.ConfigError, match="disjoint from the report seeds"):
        compare.run(config, str(tmp_path))
    for field, value, message in (
        ("floor_setup", "digit", r"config.floor_setup: unknown setup 'digit'"),
        ("floor", 90.0, r"config.floor must be an accuracy in \[0, 1\], got 90.0"),
        ("top_k", 0, r"config.top_k must be an integer >= 1, got 0"),
    ):
        config = _small_compare_config()
        config[field] = value
        with pytest.raises(jaxloss.training.ConfigError, match=message):
            compare.run(config, str(tmp_path))
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_compare_stops_with_one_fatal_line_for_a_negative_trial_count(tmp_path):
    result = testing.run_script(
        "compare.py", f"--workdir={tmp_path / 'w'}", "--config.tuning.trials=-1", cwd=tmp_path
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["FATAL config.tuning.trials must be an integer >= 0, got -1."], result.stderr[
        -2000:
    ]
    assert not os.path.exists(tmp_path / "w")


def test_readme_headline_and_comparison_page_are_replaced_between_their_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.HEADLINE_START}\nold\n{report.HEADLINE_END}\noutro\n")
    page = tmp_path.joinpath(*report.COMPARISON_PAGE)
    page.parent.mkdir(parents=True)
    page.write_text(f"# page\n{report.README_START}\nold table\n{report.README_END}\nend\n")
    report.update_readme(CELLS, str(readme), commit="abc123", minutes=4.2)

    text = readme.read_text()
    assert "\nold\n" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    summary = text[text.index(report.HEADLINE_START) : text.index(report.HEADLINE_END)]
    assert "from commit abc123 in 4.2 min" in summary
    # focal is detectably better than cross-entropy on accuracy: the headline names it.
    assert "- **digits**: accuracy: **focal** (" in summary

    text = page.read_text()
    assert "old table" not in text and text.startswith("# page\n") and text.endswith("end\n")
    table = text[text.index(report.README_START) : text.index(report.README_END)]
    assert "from commit abc123 in 4.2 min" in table
    assert "| loss | digits accuracy | digits ece |" in table
    assert "| focal | **0.9750 ± 0.0050** ▲ |" in table
    # The advice is generated with the table, so the page's claims are the verdicts'.
    assert "## Which loss when" in table and "for accuracy: **focal**" in table
