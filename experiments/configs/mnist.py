"""MNIST with the label relaxation paper's ``simple_dense`` MLP (1024-1024).

    python experiments/main.py --config experiments/configs/mnist.py:label_relaxation \
        --workdir /tmp/mnist --config.data.data_dir=~/tensorflow_datasets

Needs the tfds ``mnist`` dataset prepared in ``--config.data.data_dir``. SGD with Nesterov momentum
0.9, learning rate 0.05, batch 64, 25 epochs (the paper's step schedule never fires within them;
its Keras inverse-time ``decay=1e-5`` is left out).
"""

from configs import digits


def get_config(loss: str = "cross_entropy"):
    """The MNIST config; see the module docstring for the command line."""
    config = digits.get_config(loss)
    config.num_seeds = 1
    config.data.name = "mnist"
    config.model.hidden_sizes = (1024, 1024)
    config.num_epochs = 25
    config.batch_size = 64
    config.optimizer.learning_rate = 0.05
    config.optimizer.schedule = "constant"
    return config
