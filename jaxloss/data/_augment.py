"""Image augmentation as jitted JAX functions with explicit keys (the CIFAR protocol)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["normalize", "random_crop", "random_flip"]

_PAD_MODES = ("constant", "reflect")


def _check_images(images) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got shape {images.shape}.")


@functools.partial(jax.jit, static_argnames=("padding", "mode"))
def random_crop(key: jax.Array, images: jax.Array, *, padding: int = 4, mode: str = "constant"):
    """Pads each image by ``padding`` pixels and crops it back at a random offset.

    Args:
      key: PRNG key; the same key gives the same crops.
      images: (N, H, W, C).
      padding: pixels added on every side (4 for CIFAR).
      mode: "constant" (zeros, as torchvision's RandomCrop(padding=4)) or "reflect".

    Returns:
      (N, H, W, C) array of the input dtype; image i is shifted by an offset drawn independently in
      [-padding, padding]² per image.

    Example:
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> random_crop(jax.random.key(0), x, padding=1).shape
      (1, 4, 4, 1)
    """
    _check_images(images)
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {_PAD_MODES}, got {mode!r}.")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}.")
    n, h, w, c = images.shape
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    padded = jnp.pad(images, pad, mode=mode)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


@jax.jit
def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2, independently per image.

    Args:
      key: PRNG key; the same key gives the same flips.
      images: (N, H, W, C).

    Returns:
      (N, H, W, C) array of the input dtype.

    Example:
      >>> x = jnp.arange(4.0).reshape(1, 1, 4, 1)
      >>> random_flip(jax.random.key(1), x).ravel().tolist() in ([0, 1, 2, 3], [3, 2, 1, 0])
      True
    """
    _check_images(images)
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


@jax.jit
def normalize(images: jax.Array, *, mean, std) -> jax.Array:
    """Per-channel standardization (images − mean) / std over the last (channel) axis.

    Args:
      images: (..., C), e.g. pixels in [0, 1].
      mean: (C,) channel means, e.g. ``CIFAR10_MEAN``.
      std: (C,) channel standard deviations, e.g. ``CIFAR10_STD``.

    Returns:
      An array of the shape of ``images`` (float32 for integer inputs).

    Example:
      >>> normalize(jnp.ones((1, 2, 2, 3)), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))[0, 0, 0]
      Array([1., 1., 1.], dtype=float32)
    """
    images = jnp.asarray(images)
    dtype = images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32
    mean = jnp.asarray(mean, dtype)
    std = jnp.asarray(std, dtype)
    return ((images.astype(dtype) - mean) / std).astype(dtype)
