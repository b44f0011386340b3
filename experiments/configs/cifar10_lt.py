"""CIFAR-10-LT (exponential profile, imbalance factor 100) with ResNet-32: Balanced Softmax's setup.

    python experiments/main.py --config experiments/configs/cifar10_lt.py:balanced_softmax \
        --workdir /tmp/cifar10_lt

Only the training split is long-tailed; validation and test are balanced. SGD with momentum 0.9,
weight decay 5e-4, learning rate 0.1 with a cosine decay, batch 128, 200 epochs, random crop and
flip (the reference adds AutoAugment and Cutout, left out here).
"""

from configs import digits


def get_config(loss: str = "balanced_softmax"):
    """The CIFAR-10-LT config; see the module docstring for the command line."""
    config = digits.get_config(loss)
    config.num_seeds = 1
    config.num_epochs = 200
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.log_every_steps = 50
    config.data.name = "cifar10"
    config.data.augment = True
    config.data.imbalance_factor = 100.0
    config.model.name = "resnet"
    config.model.depth = 32
    config.optimizer.learning_rate = 0.1
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.final_learning_rate = 0.0
    return config
