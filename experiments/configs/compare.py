"""The loss comparison: every registered loss on digits, digits-LT and noisy digits, 3 seeds.

    python experiments/compare.py --workdir results
    python experiments/compare.py --workdir results --config.num_seeds=5 \
        --config.losses="('cross_entropy', 'label_relaxation')" --config.setups="('digits',)"

The protocol is fixed before any result is seen: each setup's own config (model, optimizer, epochs,
data) with each loss's default hyperparameters from their specs (``jaxloss.loss_spec``) (the papers'
defaults, never tuned on these data) and model selection on the validation split. The comparison
changes one thing: with 10 classes top-5 accuracy is near 1 for every loss, so the top-k metrics and
the top-k losses use k = 2.
"""

import ml_collections

import jaxloss


def get_config() -> ml_collections.ConfigDict:
    """See the module docstring."""
    config = ml_collections.ConfigDict()
    config.num_seeds = 3
    config.top_k = 2
    # Config modules in experiments/configs, each with get_config(loss).
    config.setups = ("digits", "digits_lt", "digits_noisy")
    config.losses = jaxloss.available_losses()
    # Which cells the calibration and long-tail plots show.
    config.calibration_setup = "digits"
    config.calibration_losses = ("cross_entropy", "label_smoothing", "label_relaxation")
    config.long_tail_setup = "digits_lt"
    return config
