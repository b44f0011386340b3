"""EXACT's UCI protocol: a linear model with EXACT's head on wine (or iris, breast_cancer).

    python experiments/main.py --config experiments/configs/uci.py:exact --workdir /tmp/uci_wine \
        --config.data.name=iris

The model has C-1 outputs and a constant 0 logit for class 0; EXACT's noise variance decays
geometrically from 100 to 1e-4 (temperature 10 -> 0.01) over the run; SGD with momentum 0.9, the
learning rate decays geometrically to 1e-4, and EXACT's gradient normalizer replaces clipping.
The reference repeats the data so that an epoch is about 500 batches; here the small splits run
for more, shorter epochs. Other losses (``uci.py:cross_entropy``) get the plain linear head.
"""

from configs import digits


def get_config(loss: str = "exact"):
    """The UCI config; see the module docstring for the command line."""
    config = digits.get_config(loss)
    config.num_seeds = 5
    config.num_epochs = 100
    config.batch_size = 32
    config.top_k = 2
    config.data.name = "wine"
    config.model.name = "linear"
    config.model.zero_logit = True
    if "min_variance" in config.loss.schedule:  # EXACT's UCI temperature schedule, 10 -> 0.01
        config.loss.schedule.min_variance = 1e-4
    config.optimizer.learning_rate = 0.1
    config.optimizer.nesterov = False
    config.optimizer.schedule = "exponential"
    config.optimizer.final_learning_rate = 1e-4
    return config
