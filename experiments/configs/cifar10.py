"""CIFAR-10 with a pre-activation ResNet-56 (the label relaxation paper's setup), for a GPU.

    python experiments/main.py --config experiments/configs/cifar10.py:label_relaxation \
        --workdir /tmp/cifar10 --config.loss.hyperparameters.alpha=0.05

Needs the tfds ``cifar10`` dataset. Random crop (pad 4) and flip; SGD with Nesterov momentum 0.9,
learning rate 0.1 multiplied by 0.3162 at epochs 51, 101 and 151, 200 epochs, batch 64; weight
decay 2e-4 on kernels (Keras' L2 1e-4 penalty, whose gradient is 2e-4 w). The paper's ResNet56V2
uses bottleneck blocks; this one uses basic pre-activation blocks.
"""

from configs import digits


def get_config(loss: str = "cross_entropy"):
    """The CIFAR-10 config; see the module docstring for the command line."""
    config = digits.get_config(loss)
    config.num_seeds = 1
    config.num_epochs = 200
    config.batch_size = 64
    config.eval_batch_size = 1000
    config.log_every_steps = 50
    config.data.name = "cifar10"
    config.data.augment = True
    config.model.name = "resnet"
    config.model.depth = 56
    config.optimizer.learning_rate = 0.1
    config.optimizer.schedule = "step"
    config.optimizer.boundaries = (51, 101, 151)
    config.optimizer.decay_factor = 0.3162
    config.optimizer.weight_decay = 2e-4
    return config
