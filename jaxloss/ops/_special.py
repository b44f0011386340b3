"""A float32 inverse error function that is cheaper and more accurate than ``lax.erf_inv`` on CPU."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

# Giles' single-precision coefficients, highest degree first: p(w - 2.5) for w < 5 (|x| < 0.9966)
# and p(sqrt(w) - 3) beyond, with w = -log((1 - x)(1 + x)).
_CENTRAL = (
    2.81022636e-08,
    3.43273939e-07,
    -3.5233877e-06,
    -4.39150654e-06,
    0.00021858087,
    -0.00125372503,
    -0.00417768164,
    0.246640727,
    1.50140941,
)
_TAIL = (
    -0.000200214257,
    0.000100950558,
    0.00134934322,
    -0.00367342844,
    0.00573950773,
    -0.0076224613,
    0.00943887047,
    1.00167406,
    2.83297682,
)


# Cephes' logf: log(1 + f) = f - f^2/2 + f^3 p(f) for f in [sqrt(1/2) - 1, sqrt(2) - 1].
_LOG = (
    7.0376836292e-2,
    -1.1514610310e-1,
    1.1676998740e-1,
    -1.2420140846e-1,
    1.4249322787e-1,
    -1.6668057665e-1,
    2.0000714765e-1,
    -2.4999993993e-1,
    3.3333331174e-1,
)
_LN2 = 0.6931471805599453


def _horner(coefficients: tuple[float, ...], t: jax.Array) -> jax.Array:
    value = jnp.full_like(t, coefficients[0])
    for c in coefficients[1:]:
        value = c + value * t
    return value


def _log_of_positive_normal(y: jax.Array) -> jax.Array:
    """log(y) for normal float32 y > 0: Cephes' logf without the handling of 0, negative, inf
    and subnormal inputs that ``jnp.log`` does, about a fifth cheaper on XLA:CPU."""
    bits = lax.bitcast_convert_type(y, jnp.int32)
    # y = mantissa * 2^exponent with the mantissa in [sqrt(1/2), sqrt(2)).
    exponent = (bits >> 23) - 126
    mantissa = lax.bitcast_convert_type((bits & 0x007FFFFF) | 0x3F000000, jnp.float32)
    low = mantissa < math.sqrt(0.5)
    exponent = jnp.where(low, exponent - 1, exponent)
    f = jnp.where(low, mantissa + mantissa, mantissa) - 1.0
    f2 = f * f
    return f * f2 * _horner(_LOG, f) - 0.5 * f2 + f + exponent.astype(jnp.float32) * _LN2


def erf_inv(x: jax.Array) -> jax.Array:
    """The inverse error function: Giles' approximation in float32, ``lax.erf_inv`` otherwise.

    XLA's float32 ``erf_inv`` forms ``log1p(-x * x)``, which rounds ``x * x`` near 1 (relative
    error up to 6e-6 there) and costs 1.5 logarithms on XLA:CPU. Giles' form takes the
    logarithm of ``(1 - x)(1 + x)``, both factors exact near 1, and that product is a normal
    number at least 2^-23 for every float32 x strictly inside (-1, 1), so a logarithm without
    special cases does: relative error below 3e-7 over [-1, 1] against float64, a quarter less
    time. It keeps ``lax.erf_inv``'s edges: +-inf at +-1, NaN outside [-1, 1] and at NaN.

    References:
      Giles, "Approximating the erfinv function", GPU Computing Gems Jade Edition, 2011.
    """
    if x.dtype != jnp.float32:
        return lax.erf_inv(x)
    y = (1.0 - x) * (1.0 + x)
    w = -_log_of_positive_normal(y)
    central = _horner(_CENTRAL, w - 2.5)
    tail = _horner(_TAIL, jnp.sqrt(w) - 3.0)
    edge = jnp.where(y == 0.0, jnp.inf, jnp.nan)
    return jnp.where(y > 0.0, jnp.where(w < 5.0, central, tail), edge) * x
