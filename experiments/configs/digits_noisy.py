"""Digits with 40 % label noise inside blocks of 5 classes (the smooth top-k SVM protocol).

    python experiments/main.py --config experiments/configs/digits_noisy.py:smooth_topk_svm \
        --workdir /tmp/digits_noisy --config.loss.hyperparameters.tau=0.5

A noisy label stays in its block of 5 consecutive classes, so top-5 predictions are unaffected
by the noise; validation and test labels are clean.
"""

from configs import digits


def get_config(loss: str = "cross_entropy"):
    """The noisy-digits config; see the module docstring for the command line."""
    config = digits.get_config(loss)
    config.data.label_noise = 0.4
    config.data.noise_block = 5
    return config
