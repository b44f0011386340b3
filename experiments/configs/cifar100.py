"""CIFAR-100 with a pre-activation ResNet-56 (the label relaxation paper's setup), for a GPU.

    python experiments/main.py --config experiments/configs/cifar100.py:label_relaxation \
        --workdir /tmp/cifar100

As ``cifar10.py`` for 300 epochs, the learning rate multiplied by 0.3162 at epochs 76, 151, 226.
"""

from configs import cifar10


def get_config(loss: str = "cross_entropy"):
    """The CIFAR-100 config; see the module docstring for the command line."""
    config = cifar10.get_config(loss)
    config.data.name = "cifar100"
    config.num_epochs = 300
    config.optimizer.boundaries = (76, 151, 226)
    return config
