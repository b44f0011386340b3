"""train_and_evaluate: results, model selection, seeds, devices, resume, NaN and checkpoint errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxloss.training import CheckpointError, train_and_evaluate
from jaxloss.training.loop import steps_per_call
from tests.testing import REPO_ROOT, run_on_devices
from tests.training.tiny import SUBPROCESS_PRELUDE, tiny_config

NUM_EPOCHS = 4


def _config(**overrides):
    return tiny_config(num_seeds=2, num_epochs=NUM_EPOCHS, **overrides)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted two-seed run on one device, shared by the comparisons below."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    return workdir, train_and_evaluate(_config(), workdir)


def _assert_same_history(got, want, **tolerance):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert set(a) == set(b)
        for key in a:
            if tolerance:
                np.testing.assert_allclose(a[key], b[key], err_msg=key, **tolerance)
            else:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_result_holds_best_epoch_history_and_calibration_bins(reference):
    _, result = reference
    best, history = result["best"], result["history"]
    assert len(history) == NUM_EPOCHS
    num_classes = len(result["class_names"])
    assert best["test/accuracy"].shape == (2,)
    assert best["test/per_class_recall"].shape == (2, num_classes)
    assert best["test/bins"].shape == (2, 3, 15)
    np.testing.assert_array_equal(best["test/bins"][:, 0].sum(-1), 360)  # every test example
    for name in ("accuracy", "top5_accuracy", "balanced_accuracy", "macro_top5_accuracy", "ece"):
        assert np.all((0 <= best[f"test/{name}"]) & (best[f"test/{name}"] <= 1)), name
    assert np.all(best["test/accuracy"] > 0.5)  # it learned something in 4 tiny epochs
    assert result["train_class_counts"].sum() == 1078


def test_best_epoch_is_chosen_on_validation_not_test(reference):
    _, result = reference
    best, history = result["best"], result["history"]
    validation = np.stack([r["validation/accuracy"] for r in history])
    test = np.stack([r["test/accuracy"] for r in history])
    for seed in range(2):
        epoch = int(np.argmax(validation[:, seed]))  # the first best epoch wins ties
        assert best["epoch"][seed] == epoch
        assert best["test/accuracy"][seed] == test[epoch, seed]
        assert best["validation/nll"][seed] == history[epoch]["validation/nll"][seed]


def test_selection_on_nll_takes_the_lowest(tmp_path):
    result = train_and_evaluate(
        tiny_config(num_epochs=3, selection_metric="nll", checkpoint_every_epochs=0),
        str(tmp_path),
    )
    nll = [r["validation/nll"][0] for r in result["history"]]
    assert result["best"]["epoch"][0] == int(np.argmin(nll))


def test_logs_and_config_are_written(reference):
    workdir, result = reference
    with open(os.path.join(workdir, "metrics.jsonl")) as file:
        lines = [json.loads(line) for line in file]
    assert [line["epoch"] for line in lines] == list(range(NUM_EPOCHS))
    np.testing.assert_array_equal(lines[-1]["test/ece"], result["history"][-1]["test/ece"])
    with open(os.path.join(workdir, "config.json")) as file:
        assert json.load(file)["loss"]["name"] == "cross_entropy"
    assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_seeds_in_one_vmapped_step_equal_separate_runs(reference, tmp_path):
    _, together = reference
    for seed in range(2):
        alone = train_and_evaluate(
            tiny_config(seed=seed, num_epochs=NUM_EPOCHS, checkpoint_every_epochs=0),
            str(tmp_path / str(seed)),
        )
        for got, want in zip(alone["history"], together["history"], strict=True):
            for key in got:
                np.testing.assert_allclose(
                    got[key],
                    np.asarray(want[key])[seed : seed + 1] if key != "epoch" else want[key],
                    rtol=1e-4,
                    atol=1e-5,
                    err_msg=key,
                )


def test_steps_per_call_divide_the_epoch_and_do_not_change_the_run(reference, tmp_path):
    assert [steps_per_call(18, limit) for limit in (32, 18, 17, 8, 1)] == [18, 18, 9, 6, 1]
    assert steps_per_call(7, 4) == 1  # a prime epoch: one step per call
    _, grouped = reference  # the default: a whole epoch (fewer than 32 steps) per call
    one_by_one = train_and_evaluate(
        _config(steps_per_call=1, checkpoint_every_epochs=0), str(tmp_path)
    )
    _assert_same_history(one_by_one["history"], grouped["history"], rtol=1e-5, atol=1e-6)


def test_population_members_equal_separate_runs_with_their_values(tmp_path):
    population = {"learning_rate": (0.03, 0.3), "alpha": (0.05, 0.4)}
    config = tiny_config("label_relaxation", num_epochs=2, checkpoint_every_epochs=0)
    config.population = population
    together = train_and_evaluate(config, str(tmp_path / "population"))
    assert together["best"]["epoch"].shape == (2,)
    for member in range(2):
        alone_config = tiny_config("label_relaxation", num_epochs=2, checkpoint_every_epochs=0)
        alone_config.optimizer.learning_rate = population["learning_rate"][member]
        alone_config.loss.hyperparameters.alpha = population["alpha"][member]
        alone = train_and_evaluate(alone_config, str(tmp_path / str(member)))
        for got, want in zip(alone["history"], together["history"], strict=True):
            for key in got:
                want_value = want[key] if key == "epoch" else np.asarray(want[key])[member]
                np.testing.assert_allclose(
                    np.asarray(got[key])[0] if key != "epoch" else got[key],
                    want_value,
                    rtol=1e-4,
                    atol=1e-5,
                    err_msg=f"member {member}: {key}",
                )


def test_population_fields_that_cannot_vary_in_one_step_are_refused(tmp_path):
    config = tiny_config("smooth_topk_svm")
    config.population = {"k": (1, 2)}
    with pytest.raises(ValueError, match=r"config.population.k: only the learning rate and"):
        train_and_evaluate(config, str(tmp_path / "a"))
    config = tiny_config("label_relaxation")
    config.population = {"learning_rate": (0.1, 0.2), "alpha": (0.1,)}
    with pytest.raises(ValueError, match="one value per configuration"):
        train_and_evaluate(config, str(tmp_path / "b"))


def test_schedules_of_traced_learning_rates_equal_optax_schedules_under_jit_and_vmap():
    import ml_collections
    import optax

    from jaxloss.training.optimizer import _learning_rate

    config = ml_collections.ConfigDict({"final_learning_rate": 1e-3, "decay_factor": 0.1})
    steps = np.arange(0, 60)
    cases = {
        "cosine": optax.cosine_decay_schedule(0.2, 50, alpha=1e-3 / 0.2),
        "exponential": optax.exponential_decay(0.2, 10, (1e-3 / 0.2) ** 0.25, staircase=True),
        "step": optax.piecewise_constant_schedule(0.2, {20: 0.1, 40: 0.1}),
        "constant": optax.constant_schedule(0.2),
    }
    config.boundaries = (2, 4)
    for name, want in cases.items():
        config.schedule = name
        traced = jax.jit(lambda lr, step: _learning_rate(config, 10, 5, lr)(step))
        got = [float(traced(np.float32(0.2), step)) for step in steps]
        np.testing.assert_allclose(got, [float(want(step)) for step in steps], rtol=1e-5)
    # A population's rates, vmapped under jit: each member follows optax's schedule of its rate.
    config.schedule = "cosine"
    rates = np.float32([0.2, 0.05, 1.0])
    members = jax.jit(jax.vmap(lambda lr: jax.vmap(_learning_rate(config, 10, 5, lr))(steps)))
    want = [optax.cosine_decay_schedule(lr, 50, alpha=1e-3 / lr)(steps) for lr in rates]
    np.testing.assert_allclose(members(rates), np.stack(want), rtol=1e-5)


def test_four_devices_give_the_metrics_of_one(reference):
    assert jax.device_count() == 1
    _, one_device = reference
    code = SUBPROCESS_PRELUDE + textwrap.dedent(
        f"""
        import json, tempfile
        import jax
        from jaxloss.training import train_and_evaluate
        assert jax.device_count() == 4
        config = tiny_config(num_seeds=2, num_epochs={NUM_EPOCHS})
        result = train_and_evaluate(config, tempfile.mkdtemp())
        print(json.dumps([{{k: (v.tolist() if hasattr(v, "tolist") else v)
                           for k, v in r.items()}} for r in result["history"]]))
        """
    )
    history = json.loads(run_on_devices(code, num_devices=4).strip().splitlines()[-1])
    history = [{k: np.asarray(v) for k, v in r.items()} for r in history]
    _assert_same_history(history, one_device["history"], rtol=1e-4, atol=1e-5)


def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_run(reference, tmp_path):
    workdir = str(tmp_path)
    # Dies by SIGKILL right after logging epoch 2 and before checkpointing it: the resumed run
    # must drop that log line, restart from the epoch 1 checkpoint and end identically.
    code = SUBPROCESS_PRELUDE + textwrap.dedent(
        f"""
        import os, signal
        from jaxloss.training import logs, train_and_evaluate
        write = logs.MetricLogger.write
        def write_then_die(self, record):
            write(self, record)
            if record["epoch"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        logs.MetricLogger.write = write_then_die
        train_and_evaluate(tiny_config(num_seeds=2, num_epochs={NUM_EPOCHS}), {workdir!r})
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    killed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as file:
        assert len(file.readlines()) == 3

    resumed = train_and_evaluate(_config(), workdir)
    _, uninterrupted = reference
    _assert_same_history(resumed["history"], uninterrupted["history"])
    for key, value in uninterrupted["best"].items():
        np.testing.assert_array_equal(resumed["best"][key], value, err_msg=key)
    with open(os.path.join(workdir, "metrics.jsonl")) as file:
        assert [json.loads(line)["epoch"] for line in file] == list(range(NUM_EPOCHS))


def test_finished_run_restarted_returns_its_results_without_training(reference):
    workdir, result = reference
    again = train_and_evaluate(_config(), workdir)
    _assert_same_history(again["history"], result["history"])
    np.testing.assert_array_equal(again["best"]["test/bins"], result["best"]["test/bins"])


def _diverging_config():
    # A sane first epoch, then a learning rate of 1e29: the loss overflows in epoch 1.
    config = tiny_config(num_epochs=3)
    config.optimizer.schedule = "step"
    config.optimizer.boundaries = (1,)
    config.optimizer.decay_factor = 1e30
    return config


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(
        FloatingPointError, match=r"at step (\d+) \(epoch 1, model index 0\)"
    ) as info:
        train_and_evaluate(_diverging_config(), str(tmp_path))
    assert "last good checkpoint (epoch 0)" in str(info.value)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0"]


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    config = tiny_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path))
    for root, _, files in os.walk(tmp_path / "checkpoints" / "0"):
        for name in files:
            with open(os.path.join(root, name), "wb") as file:
                file.write(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or incompatible"):
        train_and_evaluate(config, str(tmp_path))


def test_incompatible_checkpoint_gives_a_clear_error(tmp_path):
    train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path))
    other = tiny_config(num_epochs=1)
    other.model.hidden_sizes = (32,)
    with pytest.raises(CheckpointError, match=r"different config \(differences in: model\)"):
        train_and_evaluate(other, str(tmp_path))
    os.remove(tmp_path / "config.json")  # the checkpoint holds the config too
    with pytest.raises(CheckpointError, match=r"different config \(differences in: model\)"):
        train_and_evaluate(other, str(tmp_path))
    assert not (tmp_path / "config.json").exists()  # a refused run writes nothing
    # Even without config.json, the run resumes under its own config.
    assert train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path))["history"]


def test_unknown_selection_metric_and_loss_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="selection_metric 'f1' is not a metric; choose one of"):
        train_and_evaluate(tiny_config(selection_metric="f1"), str(tmp_path / "a"))
    config = tiny_config()
    config.loss.name = "focall"
    with pytest.raises(
        ValueError, match=r"loss.name must be one of .*got 'focall' \(did you mean 'focal'\?\)"
    ):
        train_and_evaluate(config, str(tmp_path / "b"))


def test_probability_metrics_of_cosine_heads_see_the_scaled_logits(tmp_path):
    config = tiny_config("ldam")
    assert config.model.head == "cosine"
    out = train_and_evaluate(config, str(tmp_path))
    count = out["best"]["test/bins"][0, 0]
    # softmax of raw cosines in [-1, 1] over 10 classes could not exceed e^2 / (e^2 + 9 e^-2) ~ 0.86,
    # so the top bin [14/15, 1] would stay empty.
    assert count[-1] > 0


def test_selection_follows_validation_when_test_and_last_epoch_disagree():
    # Synthetic records: validation peaks at epoch 1, test at epoch 2, and epoch 3 is last.
    from jaxloss.training.selection import update_best

    validation = [0.5, 0.9, 0.7, 0.6]
    test = [0.5, 0.6, 0.95, 0.7]
    best = {
        "epoch": np.array([-1]),
        "validation/accuracy": np.array([-np.inf]),
        "test/accuracy": np.array([np.nan]),
        "test/bins": np.zeros((1, 3, 15)),
    }
    for epoch, (v, t) in enumerate(zip(validation, test, strict=True)):
        record = {
            "epoch": np.array([epoch]),
            "validation/accuracy": np.array([v]),
            "test/accuracy": np.array([t]),
            "test/bins": np.full((1, 3, 15), float(epoch)),
        }
        best = update_best(best, record, "accuracy")
    assert best["epoch"][0] == 1
    assert best["test/accuracy"][0] == 0.6
    np.testing.assert_array_equal(best["test/bins"], 1.0)  # the bins of the selected epoch
