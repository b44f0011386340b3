"""Default config: a small MLP on scikit-learn's 8x8 digits, 3 seeds, in seconds on a CPU.

    python experiments/main.py --config experiments/configs/digits.py:label_relaxation \
        --workdir /tmp/digits --config.loss.hyperparameters.alpha=0.2

The text after ``:`` names the loss (default ``cross_entropy``); its hyperparameters start from its
spec's defaults (``jaxloss.loss_spec(name).hyperparameters()``, the papers' values) and can be
overridden one by one. Every other
config starts from this one and changes what differs. The MLP is 256-256 to stay fast; the label
relaxation paper's MNIST model (``simple_dense``) is ``model.hidden_sizes=(1024, 1024)``.
"""

import ml_collections

import jaxloss


def set_loss(config: ml_collections.ConfigDict, loss: str) -> None:
    """Sets the loss and what its spec (``jaxloss.loss_spec(loss)``) says it needs.

    Its hyperparameters start from the papers' defaults; hyperparameters without a default that
    have a tuning range (EXACT's margin) are placeholders, so the command line can set them. Its
    schedule's parameters, the head it is designed for and its optimizer recipe come along.
    """
    spec = jaxloss.loss_spec(loss)
    hyperparameters = spec.hyperparameters()
    for name in spec.ranges:
        hyperparameters.setdefault(name, ml_collections.config_dict.placeholder(float))
    config.loss.name = loss
    config.loss.hyperparameters = ml_collections.ConfigDict(hyperparameters)
    config.loss.schedule = ml_collections.ConfigDict(dict(spec.schedule_defaults))
    config.model.head = spec.head
    config.optimizer.update(spec.optimizer)


def get_config(loss: str = "cross_entropy") -> ml_collections.ConfigDict:
    """The digits config with ``loss``; see the module docstring for the command line."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_seeds = 3
    config.num_epochs = 25
    config.batch_size = 64
    config.eval_batch_size = 512
    # Metric on the VALIDATION split that picks each model's best epoch (and, in the comparison,
    # its hyperparameters); selection="last" reports the last epoch instead (a fixed budget).
    config.selection_metric = "accuracy"
    config.selection = "best"
    config.top_k = 5
    config.checkpoint_every_epochs = 1  # 0: no checkpoints (and no resume)
    config.progress_bar = True
    config.tensorboard = True  # TensorBoard events in workdir/tensorboard
    config.stop_on_nan = True  # False: a diverged model keeps NaN metrics, the others go on
    config.log_every_steps = 10
    # Optimizer steps per compiled call (the largest divisor of an epoch's steps up to this):
    # one host round trip per call instead of per step.
    config.steps_per_call = 32
    config.model_parallel = 1  # devices the classes are split over (heads, logits); the rest: batch

    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"
    config.data.split_seed = 0  # train/validation/test split, long-tail and noise draws
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds datasets only
    config.data.imbalance_factor = 1.0  # > 1: long-tailed train split
    config.data.imbalance_kind = "exp"
    config.data.label_noise = 0.0  # > 0: smooth top-k label noise on the train split
    config.data.noise_block = 5
    config.data.augment = False  # random crop (pad 4) + horizontal flip
    config.data.worker_count = 0  # input worker processes per host (0: read in this process)
    config.data.options = ml_collections.ConfigDict()  # a synthetic dataset's arguments

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"
    config.model.hidden_sizes = (256, 256)
    config.model.depth = 20  # resnet / wide_resnet
    config.model.width = 8  # wide_resnet
    config.model.head = "linear"  # linear | cosine (set from the loss's spec)
    config.model.zero_logit = False

    config.loss = ml_collections.ConfigDict()

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "cosine"
    config.optimizer.boundaries = ()  # step schedule: epochs where the rate is multiplied
    config.optimizer.decay_factor = 0.1
    config.optimizer.final_learning_rate = 1e-4  # cosine and exponential schedules
    config.optimizer.gradient_clip_norm = ml_collections.config_dict.placeholder(float)
    config.optimizer.gradient_normalizer = False  # EXACT's normalizer
    set_loss(config, loss)  # last: it sets fields of the model and the optimizer
    return config
