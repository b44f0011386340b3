"""Tests of jaxloss.training.summary.format_summary: the table a run prints at its end."""

from __future__ import annotations

import numpy as np

from jaxloss.training.population import Population
from jaxloss.training.selection import summarize
from jaxloss.training.summary import format_summary


def _summary(test_accuracies: list[float]) -> dict:
    """The summary a run of these models makes (``selection.summarize``), reported at epoch 3."""
    size = len(test_accuracies)
    best = {
        "epoch": np.full(size, 3),
        "validation/accuracy": np.full(size, 0.5),
        "test/accuracy": np.asarray(test_accuracies),
    }
    population = Population(seeds=np.arange(size), values={})
    return summarize(
        best, population, metric_names=["accuracy"], selection="best", selection_metric="accuracy"
    )


def test_several_models_get_their_rows_and_mean_and_std():
    lines = format_summary(_summary([0.25, 0.75])).splitlines()
    assert (
        lines[0] == "Reported: the epoch with the best validation accuracy, for each of 2 models."
    )
    test_rows = [line.split() for line in lines if line.startswith("test")]
    assert test_rows == [
        ["test", "0", "3", "0.2500"],
        ["test", "1", "3", "0.7500"],
        ["test", "mean", "±", "std", "0.5000", "±", f"{np.std([0.25, 0.75], ddof=1):.4f}"],
    ]


def test_one_model_is_its_own_row_without_a_spread_that_would_read_as_zero():
    text = format_summary(_summary([0.75]))
    assert text.splitlines()[0].endswith("for the one model.")
    assert "±" not in text and "mean" not in text
    assert [line.split() for line in text.splitlines() if line.startswith("test")] == [
        ["test", "0", "3", "0.7500"]
    ]
