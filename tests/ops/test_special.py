"""Tests of the float32 inverse error function against float64 SciPy."""

from __future__ import annotations

import jax
import numpy as np
from jax import lax
from scipy import special

from jaxloss.ops._special import erf_inv

_erf_inv = jax.jit(erf_inv)


def test_float32_erf_inv_is_within_3e7_of_float64_over_all_of_minus_one_to_one():
    # Every 401st float32 in [0, 1) and its negative (5 million points): dense near 1, where the
    # tail branch and the rounding of 1 - x matter, and near 0.
    positive = np.arange(0, 0x3F800000, 401, dtype=np.uint32).view(np.float32)
    near_one = 1.0 - 2.0**-24 * np.arange(1.0, 4.0)
    x = np.concatenate([positive, -positive, near_one, -near_one]).astype(np.float32)
    want = special.erfinv(x.astype(np.float64))
    got = np.asarray(_erf_inv(x), np.float64)
    # Results below the smallest normal float32 are flushed to zero on CPU.
    normal = np.abs(want) >= np.finfo(np.float32).tiny
    np.testing.assert_allclose(got[normal], want[normal], rtol=3e-7, atol=0)
    assert np.all(got[~normal] * want[~normal] >= 0)


def test_edges_follow_lax_erf_inv():
    x = np.array([1.0, -1.0, 0.0, 1.5, -1.5, np.nan], np.float32)
    got = np.asarray(_erf_inv(x))
    np.testing.assert_array_equal(got, np.asarray(lax.erf_inv(x)))
    np.testing.assert_array_equal(got[:3], [np.inf, -np.inf, 0.0])
    assert np.all(np.isnan(got[3:]))


def test_other_dtypes_use_lax_erf_inv():
    x = np.linspace(-0.999, 0.999, 101)
    with jax.enable_x64(True):
        np.testing.assert_array_equal(_erf_inv(x), lax.erf_inv(x))
