"""CIFAR-100-LT (exponential profile, imbalance factor 100) with ResNet-32: Balanced Softmax's setup.

    python experiments/main.py --config experiments/configs/cifar100_lt.py:balanced_softmax \
        --workdir /tmp/cifar100_lt

As ``cifar10_lt.py`` on CIFAR-100.
"""

from configs import cifar10_lt


def get_config(loss: str = "balanced_softmax"):
    """The CIFAR-100-LT config; see the module docstring for the command line."""
    config = cifar10_lt.get_config(loss)
    config.data.name = "cifar100"
    return config
