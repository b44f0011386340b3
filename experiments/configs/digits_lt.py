"""Digits with a long-tailed training set (exponential profile, imbalance factor 20).

    python experiments/main.py --config experiments/configs/digits_lt.py:balanced_softmax \
        --workdir /tmp/digits_lt

Validation and test stay balanced, so the selection metric and the reported accuracy are the
class-balanced ones a long-tail method is judged by.
"""

from configs import digits


def get_config(loss: str = "cross_entropy"):
    """The digits-LT config; see the module docstring for the command line."""
    config = digits.get_config(loss)
    config.data.imbalance_factor = 20.0
    config.data.imbalance_kind = "exp"
    config.selection_metric = "balanced_accuracy"
    return config
