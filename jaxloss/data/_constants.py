"""Per-channel normalization constants of the image datasets, for pixels scaled to [0, 1]."""

__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "CIFAR10_MEAN", "CIFAR10_STD", "IMAGE_STATS"]

# CIFAR constants as in the Balanced Softmax reference (TooTouch, balanced_softmax spec §1).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.247, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

# (mean, std) per channel for every tfds image dataset; MNIST, Fashion-MNIST and SVHN use the
# commonly published train-set statistics (the specs give none for them).
IMAGE_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
