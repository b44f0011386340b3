"""Fashion-MNIST with the label relaxation paper's ``simple_dense`` MLP (1024-1024).

    python experiments/main.py --config experiments/configs/fashion_mnist.py:label_relaxation \
        --workdir /tmp/fashion_mnist

As ``mnist.py`` for 50 epochs; the learning rate is multiplied by 0.3162 from epoch 31 on.
"""

from configs import mnist


def get_config(loss: str = "cross_entropy"):
    """The Fashion-MNIST config; see the module docstring for the command line."""
    config = mnist.get_config(loss)
    config.data.name = "fashion_mnist"
    config.num_epochs = 50
    config.optimizer.schedule = "step"
    config.optimizer.boundaries = (31,)
    config.optimizer.decay_factor = 0.3162
    return config
