"""Flax NNX classifiers: a backbone that maps inputs to features and a head that maps them to logits.

Backbones: ``mlp`` (the label relaxation paper's ``simple_dense`` is ``hidden_sizes=(1024, 1024)``),
``cnn`` (a small convolutional net), ``resnet`` (CIFAR pre-activation ResNet, depth 20/32/56),
``wide_resnet`` (WRN-16-8, WRN-28-10) and ``linear`` (no backbone: the head sees the flat input).
Heads: ``linear`` and ``cosine`` (:class:`jaxloss.nn.CosineClassifier` times a scale). A head outputs
the logits its loss uses, so evaluation (accuracy, ECE, NLL) sees exactly what training optimizes,
and marks its weights' class axis for the ``'model'`` mesh axis, so that with many classes the
weights, their optimizer moments and the logits are split by class over devices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxloss.training import defaults

__all__ = ["BACKBONES", "CLASS_AXIS", "HEADS", "Classifier", "build_model"]

BACKBONES = ("mlp", "cnn", "resnet", "wide_resnet", "linear")
HEADS = ("linear", "cosine")
CLASS_AXIS = "model"  # the mesh axis that a head's class dimension is split over


def _split_classes(*variables: nnx.Variable) -> None:
    """Annotates the last (class) axis of each variable with :data:`CLASS_AXIS` (``nnx``'s
    ``out_sharding`` metadata; the training step places the state by it)."""
    for variable in variables:
        variable.set_metadata(out_sharding=(None,) * (variable[...].ndim - 1) + (CLASS_AXIS,))


def _conv(in_channels: int, out_channels: int, size: int, *, rngs: nnx.Rngs, stride: int = 1):
    """The models' one convolution: square kernel, no bias (a norm follows), He-normal init."""
    return nnx.Conv(
        in_channels,
        out_channels,
        (size, size),
        strides=stride,
        use_bias=False,
        kernel_init=nnx.initializers.kaiming_normal(),
        rngs=rngs,
    )


class MLP(nnx.Module):
    """Flatten, then Dense-ReLU layers."""

    def __init__(self, in_features: int, hidden_sizes: Sequence[int], *, rngs: nnx.Rngs):
        sizes = (in_features, *hidden_sizes)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.features = sizes[-1]

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = nnx.relu(layer(x))
        return x


class Flatten(nnx.Module):
    """The identity on flat features: a linear model is a head without a backbone."""

    def __init__(self, in_features: int):
        self.features = in_features

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        return x.reshape(x.shape[0], -1)


class SmallCNN(nnx.Module):
    """Conv32-BN-ReLU, Conv64-BN-ReLU, 2x2 max-pool, Conv128-BN-ReLU, global average pool."""

    def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
        widths = (in_channels, 32, 64, 128)
        self.convs = nnx.List(
            [_conv(a, b, 3, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.norms = nnx.List([nnx.BatchNorm(b, rngs=rngs) for b in widths[1:]])
        self.features = widths[-1]

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = nnx.relu(norm(conv(x), use_running_average=not train))
            if i == 1:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        return jnp.mean(x, axis=(1, 2))


class GreyChannel(nnx.Module):
    """Gives (N, H, W) images their channel axis, (N, H, W, 1), before an image backbone."""

    def __init__(self, backbone: nnx.Module):
        self.backbone = backbone
        self.features = backbone.features

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.backbone(x[..., None], train=train)


class PreActBlock(nnx.Module):
    """BN-ReLU-Conv3x3-BN-ReLU-Conv3x3 plus a shortcut (a 1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.BatchNorm(in_channels, rngs=rngs)
        self.conv1 = _conv(in_channels, out_channels, 3, stride=stride, rngs=rngs)
        self.norm2 = nnx.BatchNorm(out_channels, rngs=rngs)
        self.conv2 = _conv(out_channels, out_channels, 3, rngs=rngs)
        self.projection = (
            _conv(in_channels, out_channels, 1, stride=stride, rngs=rngs)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = nnx.relu(self.norm1(x, use_running_average=not train))
        # The projection sees the pre-activated input, as in He et al. (2016b).
        shortcut = x if self.projection is None else self.projection(out)
        out = self.conv1(out)
        out = nnx.relu(self.norm2(out, use_running_average=not train))
        return self.conv2(out) + shortcut


class PreActResNet(nnx.Module):
    """CIFAR-style pre-activation residual network: a 3x3 stem and three stages of blocks.

    ``widths=(16, 32, 64)`` with ``blocks_per_stage=(depth - 2) // 6`` is ResNet-20/32/56;
    ``widths=(16k, 32k, 64k)`` with ``(depth - 4) // 6`` blocks is WRN-depth-k.
    """

    def __init__(
        self, in_channels: int, widths: Sequence[int], blocks_per_stage: int, *, rngs: nnx.Rngs
    ):
        self.stem = _conv(in_channels, 16, 3, rngs=rngs)
        blocks, channels = [], 16
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(PreActBlock(channels, width, stride, rngs=rngs))
                channels = width
        self.blocks = nnx.List(blocks)
        self.norm = nnx.BatchNorm(channels, rngs=rngs)
        self.features = channels

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, train=train)
        x = nnx.relu(self.norm(x, use_running_average=not train))
        return jnp.mean(x, axis=(1, 2))


class LinearHead(nnx.Module):
    """A dense layer; with ``zero_logit`` it has C-1 outputs and a constant 0 logit for class 0.

    The zero logit is EXACT's UCI parametrization: softmax-style losses are invariant to a shift of
    all logits, so one class's logit can be pinned without losing expressiveness.
    """

    def __init__(self, in_features: int, num_classes: int, *, zero_logit: bool, rngs: nnx.Rngs):
        self.zero_logit = zero_logit
        self.linear = nnx.Linear(in_features, num_classes - int(zero_logit), rngs=rngs)
        _split_classes(self.linear.kernel, self.linear.bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        logits = self.linear(x)
        if self.zero_logit:
            logits = jnp.concatenate([jnp.zeros_like(logits[..., :1]), logits], axis=-1)
        return logits


class CosineHead(nnx.Module):
    """``scale`` times cosine scores (:class:`jaxloss.nn.CosineClassifier`): the logits of the
    losses made for a normalized last layer (LDAM, the imbalanced noised top-k loss)."""

    def __init__(self, in_features: int, num_classes: int, *, scale: float, rngs: nnx.Rngs):
        from jaxloss import nn

        self.cosine = nn.CosineClassifier(in_features, num_classes, rngs=rngs)
        _split_classes(self.cosine.kernel)
        self.scale = scale

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.scale * self.cosine(x)


class Classifier(nnx.Module):
    """A backbone followed by a head."""

    def __init__(self, backbone: nnx.Module, head: nnx.Module):
        self.backbone = backbone
        self.head = head

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.head(self.backbone(x, train=train))


def _backbone(config: ml_collections.ConfigDict, input_shape: tuple[int, ...], rngs: nnx.Rngs):
    name = config.name
    if name in ("mlp", "linear"):
        in_features = math.prod(input_shape)
        if name == "linear":
            return Flatten(in_features)
        return MLP(in_features, tuple(config.hidden_sizes), rngs=rngs)
    if len(input_shape) == 2:
        # (H, W) grey images without a channel axis (keras' MNIST arrays): one channel.
        return GreyChannel(_backbone(config, (*input_shape, 1), rngs))
    if len(input_shape) != 3:
        raise ValueError(
            f"model {name!r} needs images of shape (H, W, C) or (H, W), got input shape "
            f"{input_shape}."
        )
    channels = input_shape[-1]
    if name == "cnn":
        return SmallCNN(channels, rngs=rngs)
    if name == "resnet":
        if (config.depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n+2 (20, 32, 56, ...), got {config.depth}.")
        return PreActResNet(channels, (16, 32, 64), (config.depth - 2) // 6, rngs=rngs)
    if name == "wide_resnet":
        if (config.depth - 4) % 6:
            raise ValueError(f"wide_resnet depth must be 6n+4 (16, 28, ...), got {config.depth}.")
        k = config.width
        return PreActResNet(channels, (16 * k, 32 * k, 64 * k), (config.depth - 4) // 6, rngs=rngs)
    raise ValueError(f"Unknown model {name!r}. Available models: {', '.join(BACKBONES)}.")


def build_model(
    config: ml_collections.ConfigDict,
    num_classes: int,
    input_shape: tuple[int, ...],
    rngs: nnx.Rngs,
    *,
    cosine_scale: float = 1.0,
) -> Classifier:
    """Builds the classifier a model config describes.

    Args:
      config: the ``model`` part of an experiment config: ``name`` (one of :data:`BACKBONES`),
        ``head`` (one of :data:`HEADS`) and the fields they use: ``hidden_sizes`` (mlp),
        ``depth`` (resnet, wide_resnet), ``width`` (wide_resnet), ``zero_logit`` (linear head);
        a field not given takes its default (:mod:`jaxloss.training.defaults`).
      num_classes: number of logits C.
      input_shape: shape of one example, e.g. (8, 8, 1) or (13,).
      rngs: initialization randomness.
      cosine_scale: the cosine head's factor on its cosines; the training step passes the loss's
        own scale (:attr:`jaxloss.losses.LossSpec.logit_scale`), so that the head outputs the
        logits the loss uses.

    Returns:
      A :class:`Classifier`; call it as ``model(x, train=...)``.

    Raises:
      ValueError: an unknown model or head name, or a depth the architecture cannot have.

    Example:
      >>> from jaxloss.training import defaults
      >>> config = defaults.get_config().model
      >>> config.hidden_sizes = (32,)
      >>> model = build_model(config, 10, (8, 8, 1), nnx.Rngs(0))
      >>> model(jnp.zeros((2, 8, 8, 1)), train=False).shape
      (2, 10)
    """
    # The fields not given keep their defaults, from the one place defaults live.
    given, config = config, defaults.get_config().model
    config.update(given)
    backbone = _backbone(config, tuple(input_shape), rngs)
    head = config.head
    if head == "linear":
        head_module = LinearHead(
            backbone.features, num_classes, zero_logit=bool(config.zero_logit), rngs=rngs
        )
    elif head == "cosine":
        head_module = CosineHead(backbone.features, num_classes, scale=cosine_scale, rngs=rngs)
    else:
        raise ValueError(f"Unknown head {head!r}. Available heads: {', '.join(HEADS)}.")
    return Classifier(backbone, head_module)
