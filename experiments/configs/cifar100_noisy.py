"""CIFAR-100 with 20 % block label noise: the smooth top-k SVM / noised top-k setup, for a GPU.

    python experiments/main.py --config experiments/configs/cifar100_noisy.py:balanced_noised_topk \
        --workdir /tmp/cifar100_noisy --config.loss.hyperparameters.epsilon=0.2 \
        --config.loss.hyperparameters.sample_size=10

The reference trains DenseNet-40-40; this config uses WRN-16-8. SGD with Nesterov momentum 0.9,
weight decay 1e-4, learning rate 0.1 multiplied by 0.1 at epochs 151 and 226, 300 epochs,
batch 64, random crop and flip; the best epoch is chosen on validation top-5 accuracy.
"""

from configs import digits


def get_config(loss: str = "smooth_topk_svm"):
    """The noisy CIFAR-100 config; see the module docstring for the command line."""
    config = digits.get_config(loss)
    config.num_seeds = 1
    config.num_epochs = 300
    config.batch_size = 64
    config.eval_batch_size = 1000
    config.log_every_steps = 50
    config.selection_metric = "top5_accuracy"
    config.data.name = "cifar100"
    config.data.augment = True
    config.data.label_noise = 0.2
    config.model.name = "wide_resnet"
    config.model.depth = 16
    config.model.width = 8
    config.optimizer.learning_rate = 0.1
    config.optimizer.schedule = "step"
    config.optimizer.boundaries = (151, 226)
    config.optimizer.decay_factor = 0.1
    config.optimizer.weight_decay = 1e-4
    return config
