"""Experiment configs: each loads, names a registered loss and model, and has its command line."""

import glob
import importlib
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

import jaxloss
from jaxloss.training import ConfigError, build_model, defaults, train_and_evaluate
from tests.testing import run_script
from tests.training.tiny import EXPERIMENTS

INPUT_SHAPES = {
    "digits": (8, 8, 1),
    "wine": (13,),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
    "teacher": (64,),
}
CONFIGS = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(EXPERIMENTS, "configs", "*.py"))
    if os.path.basename(p) != "compare.py"
)


def test_every_setup_of_the_issue_has_a_config():
    assert set(CONFIGS) >= {
        "digits", "digits_lt", "digits_noisy", "uci", "mnist", "fashion_mnist", "cifar10",
        "cifar100", "cifar10_lt", "cifar100_lt", "cifar100_noisy",
    }  # fmt: skip


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_model_and_loss(name):
    module = importlib.import_module(f"configs.{name}")
    assert "experiments/main.py --config experiments/configs/" + name in " ".join(
        module.__doc__.split()
    ).replace("\\ ", "")
    config = module.get_config()
    num_classes = config.data.options.get("num_classes") or (
        100 if config.data.name == "cifar100" else 10
    )
    spec = jaxloss.loss_spec(config.loss.name)
    assert config.model.head == spec.head
    jaxloss.get_loss(
        config.loss.name, class_counts=np.ones(num_classes), **config.loss.hyperparameters
    )
    model = nnx.eval_shape(
        lambda: build_model(config.model, num_classes, INPUT_SHAPES[config.data.name], nnx.Rngs(0))
    )
    assert jax.tree.leaves(nnx.state(model, nnx.Param))
    for loss in jaxloss.available_losses():
        assert module.get_config(loss).loss.name == loss


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_resolves_against_the_defaults_with_every_loss(name):
    module = importlib.import_module(f"configs.{name}")
    defaults_fields = _leaves(defaults.get_config())
    for loss in jaxloss.available_losses():
        config = module.get_config(loss)
        # Resolving adds no value and changes none: every field the config sets is a default's.
        resolved = defaults.resolve(config)
        assert resolved.to_dict() == {**defaults.get_config().to_dict(), **config.to_dict()}
        assert set(_leaves(config)) <= set(defaults_fields)


def _leaves(config, prefix=""):
    """Dotted paths of every field that is not a nested config, open fields whole."""
    paths = []
    for key, value in config.items():
        path = prefix + key
        if hasattr(value, "items") and path not in defaults.OPEN_FIELDS:
            paths.extend(_leaves(value, path + "."))
        else:
            paths.append(path)
    return paths


def test_a_field_no_run_reads_is_refused_naming_the_closest(tmp_path):
    from tests.training.tiny import tiny_config

    config = tiny_config()
    config.num_seed = 2  # a typo from Python: the command line's checks do not see it
    with pytest.raises(ConfigError, match=r"num_seed: no such config field \(did you mean 'num_s"):
        train_and_evaluate(config, str(tmp_path / "a"))
    config = tiny_config()
    config.optimizer.learning_rat = 0.1
    with pytest.raises(ConfigError, match=r"optimizer.learning_rat: .*fields of optimizer: bound"):
        train_and_evaluate(config, str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def _main(*args):
    return run_script("main.py", *args, timeout=300)


def test_main_trains_with_overrides_prints_a_summary_and_reruns_quietly(tmp_path):
    args = [
        "--config", os.path.join(EXPERIMENTS, "configs", "digits.py") + ":label_relaxation",
        "--workdir", str(tmp_path),
        "--config.loss.hyperparameters.alpha=0.2", "--config.num_epochs=2",
        "--config.num_seeds=2", "--config.model.hidden_sizes=(16,)",
    ]  # fmt: skip
    first = _main(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(tmp_path / "config.json") as file:
        config = json.load(file)
    assert config["loss"] == {
        "name": "label_relaxation",
        "hyperparameters": {"alpha": 0.2},
        "schedule": {},
    }
    assert len(open(tmp_path / "metrics.jsonl").readlines()) == 2
    with open(tmp_path / "results.json") as file:
        results = json.load(file)
    assert [m["seed"] for m in results["models"]] == [0, 1]
    test_accuracy = [m["test"]["accuracy"] for m in results["models"]]
    np.testing.assert_allclose(results["mean"]["test"]["accuracy"], np.mean(test_accuracy))
    assert f"{results['mean']['test']['accuracy']:.4f} ± " in first.stdout
    # Library INFO lines (Orbax logs dozens per checkpoint) are filtered; the epochs are not.
    log = first.stderr.splitlines()
    assert sum("epoch " in line for line in log) == 2
    assert not any("orbax" in line or "checkpoint_manager" in line for line in log), log[:5]
    assert len(log) < 10
    second = _main(*args)
    assert second.returncode == 0
    assert "holds a finished run (2 epochs): nothing to train" in second.stderr
    assert second.stdout == first.stdout


def test_main_help_lists_configs_and_losses():
    result = _main("--help")
    assert result.returncode == 0
    assert "digits_lt" in result.stdout and "balanced_noised_topk" in result.stdout
    assert "--workdir" in result.stdout


def test_config_mistakes_fail_before_training_naming_the_field(tmp_path):
    # Through main.py once: the one FATAL line, nothing written. Every field's check runs
    # in-process in tests/training/test_misuse.py, the command line's own mistakes in
    # tests/test_experiments.py.
    workdir = tmp_path / "k"
    result = _main(
        "--config", os.path.join(EXPERIMENTS, "configs", "digits.py") + ":topk_svm",
        "--workdir", str(workdir), "--config.loss.hyperparameters.k=10",
    )  # fmt: skip
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        "FATAL Bad config: loss.hyperparameters.k must be in [1, 9] for the 10 classes"
    )
    assert not workdir.exists()
