"""poly1_loss against a float64 NumPy oracle, optax's cross-entropy at epsilon = 0, finite
differences, float32 extremes and split classes under shard_map (the conventions every loss keeps
are in test_conventions.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp

import jaxloss
from tests import testing


def ref_poly1(z, y, epsilon):
    log_p = z - logsumexp(z, axis=-1, keepdims=True)
    log_py = np.take_along_axis(log_p, y[..., None], axis=-1)[..., 0]
    return -log_py + epsilon * (1.0 - np.exp(log_py))


@pytest.mark.parametrize("epsilon", [-1.0, 0.0, 1.0, 3.5])
def test_matches_the_float64_oracle(epsilon):
    z = testing.random_logits(0, (6, 3, 5))
    y = testing.random_labels(0, (6, 3), 5)
    testing.assert_matches_oracle(
        lambda z, y, epsilon: jaxloss.poly1_loss(z, y, epsilon=epsilon), ref_poly1, z, y,
        epsilon=epsilon,
    )  # fmt: skip


def test_epsilon_zero_is_optax_cross_entropy():
    z = jnp.asarray(testing.random_logits(1, (8, 7)), jnp.float32)
    y = jnp.asarray(testing.random_labels(1, (8,), 7))
    where = jnp.asarray(np.random.default_rng(1).random((8, 7)) > 0.3)
    np.testing.assert_allclose(
        jaxloss.poly1_loss(z, y, epsilon=0.0, where=where),
        optax.softmax_cross_entropy_with_integer_labels(z, y, where=where),
        rtol=1e-6,
    )


def test_gradient_matches_finite_differences():
    z = testing.random_logits(2, (4, 6))
    y = jnp.asarray(testing.random_labels(2, (4,), 6))
    testing.check_grads_f64(lambda z: jaxloss.poly1_loss(z, y, epsilon=2.0), (z,), order=2)


def test_the_polynomial_term_keeps_precision_when_p_y_rounds_to_one():
    # p_y = 1 - 2e-20 rounds to 1 in float32, yet 1 - p_y is exact as a sum of the others.
    z = jnp.array([[50.0, 0.0, 0.0], [1e4 + 50.0, 1e4, 1e4]], jnp.float32)
    y = jnp.array([0, 0])
    term = jaxloss.poly1_loss(z, y, epsilon=1.0) - jaxloss.poly1_loss(z, y, epsilon=0.0)
    np.testing.assert_allclose(term, 2 * np.exp(-50.0) / (1 + 2 * np.exp(-50.0)), rtol=1e-5)
    grad = jax.grad(lambda z: jaxloss.poly1_loss(z, y, epsilon=1.0).sum())(z)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, 1:] > 0)


def test_bfloat16_in_bfloat16_out_and_bad_epsilon():
    z = jnp.zeros((2, 4), jnp.bfloat16)
    assert jaxloss.poly1_loss(z, jnp.array([0, 1])).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"epsilon must be in \[-1.0, inf\], got -2"):
        jaxloss.poly1_loss(z, jnp.array([0, 1]), epsilon=-2.0)


_SHARD_MAP_CODE = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import jaxloss

rng = np.random.default_rng(0)
z = jnp.asarray(3 * rng.standard_normal((4, 8)), jnp.float32)
y = jnp.array([1, 6, 3, 5])  # one label in each of the 4 shards of a 1 x 4 mesh
# Row 0 masks its label's class, row 2 every class but one, row 3 every class.
class_mask = jnp.asarray(rng.random((4, 8)) > 0.3).at[0, 1].set(False)
class_mask = class_mask.at[2].set(jnp.arange(8) == 4).at[3].set(False)
example_mask = jnp.array([True, False, True, False])

results = {}
for d, m in ((2, 2), (1, 4)):
    mesh = Mesh(np.array(jax.devices()).reshape(d, m), ("data", "model"))
    for mask, where, spec in (("class", class_mask, P("data", "model")),
                              ("example", example_mask, P("data"))):
        loss = lambda z, y, w, **o: jaxloss.poly1_loss(z, y, epsilon=2.0, where=w, **o)
        split = jax.shard_map(
            lambda z, y, w: loss(z, y, w, class_axis_name="model"), mesh=mesh,
            in_specs=(P("data", "model"), P("data"), spec), out_specs=P("data"))
        mean = lambda f: jax.value_and_grad(lambda z: jnp.mean(f(z, y, where)))
        want = jax.jit(mean(loss))(z)
        got = jax.jit(mean(split))(z)
        failed = results.setdefault(mask, [])
        for part, g, w in zip(("value", "gradient"), got, want):
            if not np.allclose(g, w, rtol=1e-5, atol=1e-7):
                failed.append(f"{d}x{m}: {part} off by {float(np.abs(g - w).max())}")
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def shard_map_results():
    out = testing.run_on_devices(_SHARD_MAP_CODE, num_devices=4)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("mask", ["class", "example"])
def test_split_classes_under_shard_map_match_single_device_under_masks(shard_map_results, mask):
    # Each device holds 4 or 2 of the 8 classes; the values and gradients of the batch mean equal
    # the single-device ones on 2x2 and 1x4 meshes.
    failed = shard_map_results[mask]
    assert failed == [], "\n".join(failed)
