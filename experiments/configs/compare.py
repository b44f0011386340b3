"""The loss comparison: every registered loss on digits, digits-LT and noisy digits, 3 seeds.

    python experiments/compare.py --workdir results
    python experiments/compare.py --workdir results --config.num_seeds=5 \
        --config.losses='cross_entropy,label_relaxation'

The protocol is fixed before any result is seen: the setups' own configs (model, optimizer, epochs,
data), the loss hyperparameters below (the papers' defaults, never tuned on these data), and model
selection on the validation split. Only the class count of the data changes the top-k ``k``: with 10
classes, top-5 accuracy is near 1 for every loss, so the top-k losses and metrics use k = 2.
"""

import importlib.util
import os

import ml_collections

TOP_K = 2


def _setup(name: str) -> ml_collections.ConfigDict:
    """The config of ``experiments/configs/<name>.py``."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"jaxloss_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.top_k = TOP_K
    config.progress_bar = False
    config.checkpoint_every_epochs = 0  # a comparison is re-run, not resumed
    return config


def _loss(hyperparameters=None, overrides=None) -> dict:
    return {"hyperparameters": hyperparameters or {}, "overrides": overrides or {}}


def get_config() -> ml_collections.ConfigDict:
    """See the module docstring."""
    config = ml_collections.ConfigDict()
    config.num_seeds = 3
    # Full configs of each setup, so any of their fields can be overridden from the command line,
    # e.g. --config.setups.digits.num_epochs=10.
    config.setups = {name: _setup(name) for name in ("digits", "digits_lt", "digits_noisy")}
    config.losses = ""  # comma-separated subset of `grid` to run; empty: all of them
    # name -> hyperparameters and overrides of the setup's config (nested like the config). LDAM and the imbalanced noised
    # top-k loss are designed for a cosine classifier, which they get here.
    config.grid = {
        "cross_entropy": _loss(),
        "label_smoothing": _loss({"alpha": 0.1}),
        "label_relaxation": _loss({"alpha": 0.1}),
        "confidence_penalty": _loss({"beta": 0.3}),
        "focal": _loss({"gamma": 2.0}),
        "balanced_softmax": _loss(),
        "logit_adjusted": _loss({"tau": 1.0}),
        "ldam": _loss({"max_m": 0.5, "scale": 30.0}, overrides={"model": {"head": "cosine"}}),
        "exact": _loss(),
        "smooth_topk_svm": _loss({"k": TOP_K, "alpha": 1.0, "tau": 1.0}),
        "topk_svm": _loss({"k": TOP_K, "alpha": 1.0}),
        "balanced_noised_topk": _loss({"k": TOP_K, "epsilon": 1.0, "n_samples": 5}),
        "imbalanced_noised_topk": _loss(
            {"k": TOP_K, "epsilon": 0.01, "max_m": 0.2, "scale": 50.0, "n_samples": 5},
            overrides={"model": {"head": "cosine"}},
        ),
    }
    # Which cells the calibration and long-tail plots show.
    config.calibration_setup = "digits"
    config.calibration_losses = ["cross_entropy", "label_smoothing", "label_relaxation"]
    config.long_tail_setup = "digits_lt"
    return config
