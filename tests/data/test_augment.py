"""Augmentation: shapes, dtype, determinism by key, crop/flip semantics, normalization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloss import data


def _images(n=8, h=6, w=5, c=3):
    return jnp.arange(n * h * w * c, dtype=jnp.float32).reshape(n, h, w, c) + 1.0


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_random_crop_shapes_and_determinism(mode):
    x = _images()
    a = data.random_crop(jax.random.key(0), x, padding=2, mode=mode)
    b = data.random_crop(jax.random.key(0), x, padding=2, mode=mode)
    c = data.random_crop(jax.random.key(1), x, padding=2, mode=mode)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    if mode == "constant":
        assert np.any(np.asarray(a) == 0)  # some zero-padded pixels entered the crop
    else:
        assert np.all(np.isin(np.asarray(a), np.asarray(x)))  # reflect only copies pixels


def test_random_crop_is_a_shift_of_each_image():
    x = _images(n=16)
    out = np.asarray(data.random_crop(jax.random.key(3), x, padding=1))
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    for i in range(16):
        matches = [
            np.array_equal(out[i], padded[i, dy : dy + 6, dx : dx + 5])
            for dy in range(3)
            for dx in range(3)
        ]
        assert sum(matches) == 1
    assert np.array_equal(data.random_crop(jax.random.key(3), x, padding=0), x)


def test_random_flip_per_image_and_deterministic():
    x = _images(n=64)
    out = np.asarray(data.random_flip(jax.random.key(5), x))
    same = np.asarray(data.random_flip(jax.random.key(5), x))
    np.testing.assert_array_equal(out, same)
    flipped = np.array([np.array_equal(out[i], np.asarray(x)[i, :, ::-1]) for i in range(64)])
    kept = np.array([np.array_equal(out[i], np.asarray(x)[i]) for i in range(64)])
    assert np.all(flipped ^ kept) and 10 < flipped.sum() < 54


def test_normalize_and_constants():
    x = jnp.full((2, 4, 4, 3), 0.5)
    y = data.normalize(x, mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD)
    expected = (0.5 - np.array(data.CIFAR10_MEAN)) / np.array(data.CIFAR10_STD)
    np.testing.assert_allclose(y[1, 2, 3], expected, rtol=1e-6)
    assert data.CIFAR100_MEAN == (0.5071, 0.4867, 0.4408)
    assert data.CIFAR100_STD == (0.2675, 0.2565, 0.2761)


def test_bad_inputs():
    with pytest.raises(ValueError, match="mode"):
        data.random_crop(jax.random.key(0), _images(), mode="wrap")
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        data.random_flip(jax.random.key(0), jnp.zeros((4, 4, 3)))
