"""Many classes: a linear classifier on a 10,000-class teacher problem, classes split over devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python experiments/main.py \
        --config experiments/configs/many_classes.py:smooth_topk_svm --workdir /tmp/many_classes

The data (``jaxloss.data.teacher_dataset``) are labelled by a fixed random linear teacher that
sees a noisy copy of each input, so even the teacher's top-5 accuracy is below 1. The head's
weights, their optimizer moments and the logits are split by class over ``model_parallel``
devices (4 host CPU devices above; a GPU or TPU slice with a real cluster). The top-k losses use
k = 5 and the epochs are selected on validation top-5 accuracy.
"""

import ml_collections
from configs import digits


def get_config(loss: str = "cross_entropy"):
    """The many-class config; see the module docstring for the command line."""
    config = digits.get_config(loss)
    config.data.name = "teacher"
    config.data.options = ml_collections.ConfigDict(
        {
            "num_classes": 10_000,
            "num_features": 64,
            "train_examples": 100_000,
            "eval_examples": 10_000,
            "input_noise": 0.5,
        }
    )
    config.model.name = "linear"
    config.model_parallel = 4
    config.num_seeds = 1
    config.num_epochs = 3
    config.batch_size = 512
    config.eval_batch_size = 2048
    config.top_k = 5
    config.selection_metric = "top5_accuracy"
    if "k" in config.loss.hyperparameters:
        config.loss.hyperparameters.k = 5
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    return config
