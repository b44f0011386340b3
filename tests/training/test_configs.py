"""Experiment configs: each loads, names a registered loss and model, and has its command line."""

import glob
import importlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import jaxloss
from jaxloss.training import build_model
from tests.testing import REPO_ROOT
from tests.training.tiny import EXPERIMENTS

INPUT_SHAPES = {
    "digits": (8, 8, 1),
    "wine": (13,),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
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
    num_classes = 100 if config.data.name == "cifar100" else 10
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


def test_main_trains_with_overrides(tmp_path):
    command = [
        sys.executable, os.path.join(EXPERIMENTS, "main.py"),
        "--config", os.path.join(EXPERIMENTS, "configs", "digits.py") + ":label_relaxation",
        "--workdir", str(tmp_path),
        "--config.loss.hyperparameters.alpha=0.2", "--config.num_epochs=1",
        "--config.num_seeds=1", "--config.model.hidden_sizes=(16,)",
        "--config.checkpoint_every_epochs=0",
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(command, check=True, cwd=REPO_ROOT, env=env, capture_output=True, timeout=300)
    with open(tmp_path / "config.json") as file:
        config = json.load(file)
    assert config["loss"] == {
        "name": "label_relaxation",
        "hyperparameters": {"alpha": 0.2},
        "schedule": {},
    }
    assert len(open(tmp_path / "metrics.jsonl").readlines()) == 1
