"""Default config: a small MLP on scikit-learn's 8x8 digits, 3 seeds, in seconds on a CPU.

    python experiments/main.py --config experiments/configs/digits.py:label_relaxation \
        --workdir /tmp/digits --config.loss.hyperparameters.alpha=0.2

The text after ``:`` names the loss (default ``cross_entropy``); its hyperparameters start from
:data:`LOSS_HYPERPARAMETERS` (the papers' defaults) and can be overridden one by one. Every other
config starts from this one and changes what differs. The MLP is 256-256 to stay fast; the label
relaxation paper's MNIST model (``simple_dense``) is ``model.hidden_sizes=(1024, 1024)``.
"""

import ml_collections

# Default hyperparameters of every registered loss (jaxloss.available_losses()).
LOSS_HYPERPARAMETERS = {
    "cross_entropy": {},
    "label_smoothing": {"alpha": 0.1},
    "exact": {"sample_size": 16},
    "smooth_topk_svm": {"k": 5, "alpha": 1.0, "tau": 1.0},
    "topk_svm": {"k": 5, "alpha": 1.0},
    "balanced_noised_topk": {"k": 5, "epsilon": 1.0, "n_samples": 5},
    "imbalanced_noised_topk": {
        "k": 5,
        "epsilon": 0.01,
        "max_m": 0.2,
        "scale": 50.0,
        "n_samples": 5,
    },
    "ldam": {"max_m": 0.5, "scale": 30.0},
    "label_relaxation": {"alpha": 0.1},
    "confidence_penalty": {"beta": 0.3},
    "focal": {"gamma": 2.0},
    "balanced_softmax": {},
    "logit_adjusted": {"tau": 1.0},
}
# Losses designed for scaled cosine scores (a normalized last layer) rather than free logits.
COSINE_HEAD_LOSSES = ("ldam", "imbalanced_noised_topk")


def set_loss(config: ml_collections.ConfigDict, loss: str) -> None:
    """Sets the loss, its default hyperparameters and the head it is designed for."""
    if loss not in LOSS_HYPERPARAMETERS:
        raise ValueError(f"Unknown loss {loss!r}. Available: {', '.join(LOSS_HYPERPARAMETERS)}.")
    config.loss.name = loss
    config.loss.hyperparameters = ml_collections.ConfigDict(LOSS_HYPERPARAMETERS[loss])
    config.model.head = "cosine" if loss in COSINE_HEAD_LOSSES else "linear"
    # EXACT's recipe: a head whose frozen variance (the temperature squared) decays over the run,
    # and its gradient normalizer in place of clipping.
    config.model.head = "exact" if loss == "exact" else config.model.head
    config.optimizer.gradient_normalizer = loss == "exact"


def get_config(loss: str = "cross_entropy") -> ml_collections.ConfigDict:
    """The digits config with ``loss``; see the module docstring for the command line."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_seeds = 3
    config.num_epochs = 25
    config.batch_size = 64
    config.eval_batch_size = 512
    # Metric on the VALIDATION split that picks each seed's best epoch.
    config.selection_metric = "accuracy"
    config.top_k = 5
    config.checkpoint_every_epochs = 1  # 0: no checkpoints (and no resume)
    config.progress_bar = True
    config.log_every_steps = 10

    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"
    config.data.split_seed = 0  # train/validation/test split, long-tail and noise draws
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds datasets only
    config.data.imbalance_factor = 1.0  # > 1: long-tailed train split
    config.data.imbalance_kind = "exp"
    config.data.label_noise = 0.0  # > 0: smooth top-k label noise on the train split
    config.data.noise_block = 5
    config.data.augment = False  # random crop (pad 4) + horizontal flip

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"
    config.model.hidden_sizes = (256, 256)
    config.model.depth = 20  # resnet / wide_resnet
    config.model.width = 8  # wide_resnet
    config.model.head = "linear"  # linear | cosine | exact
    config.model.zero_logit = False
    config.model.initial_variance = 100.0  # exact head
    config.model.min_variance = 1.0  # exact head

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
