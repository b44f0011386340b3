"""Digits with a fixed budget: the last epoch is reported, with no early stopping on validation.

    python experiments/main.py --config experiments/configs/digits_last.py:label_relaxation \
        --workdir /tmp/digits_last

Early stopping on validation hides overconfidence, which label relaxation and the confidence
penalty address; their paper reports the last epoch of a fixed budget. Hyperparameters are still
chosen on validation when the comparison tunes them.
"""

from configs import digits


def get_config(loss: str = "cross_entropy"):
    """The fixed-budget digits config; see the module docstring for the command line."""
    config = digits.get_config(loss)
    config.selection = "last"
    return config
