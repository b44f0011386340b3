"""_fusion.apart: the same values and gradients, kept a conditional under jax.vmap."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _fusion


def _f(x, y):
    return jnp.sin(x) * y, jnp.sum(x * x)


def test_apart_is_the_function_with_its_gradient_also_under_vmap():
    x = np.linspace(-2.0, 2.0, 12, dtype=np.float32).reshape(3, 4)
    y = np.float32(1.5)

    def loss(f, x):
        a, b = f(x, y)
        return jnp.sum(a) + b

    apart = jax.jit(
        jax.vmap(jax.value_and_grad(lambda x: loss(lambda *a: _fusion.apart(_f, *a), x)))
    )
    inline = jax.jit(jax.vmap(jax.value_and_grad(lambda x: loss(_f, x))))
    for got, want in zip(apart(x), inline(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # An unbatched predicate: the conditional stays (a batched one would be a select of both
    # branches, inlined).
    assert "conditional(" in apart.lower(x).compile().as_text()
