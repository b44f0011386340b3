"""Tests of jaxloss._selection: top_k (lax.top_k's results on one device and on class shards) and
argsort (jnp.argsort's stable order by a sorting network on CPU).

The oracle is a stable NumPy argsort of the negated row (lowest index first among ties, as
``lax.top_k`` documents); gradients are checked against the scatter of the cotangent onto the
selected indices and by finite differences.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxloss._selection import argsort, top_k
from tests import testing


def oracle_top_k(x, k):
    """Values and indices of the k largest entries of the last axis, lowest index first on ties."""
    x = np.asarray(x, np.float64)
    indices = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, indices, axis=-1), indices


def oracle_grad(x, weights, k):
    """Gradient of sum(weights * top_k(x).values): each weight lands on its entry's index."""
    _, indices = oracle_top_k(x, k)
    grad = np.zeros(np.shape(x))
    np.put_along_axis(grad, indices, np.asarray(weights, np.float64), axis=-1)
    return grad


def tied(seed, shape):
    """Small integers: most rows hold ties across the k-th place."""
    return np.random.default_rng(seed).integers(-2, 3, size=shape).astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("shape", [(7,), (5, 12), (2, 3, 9)])
@pytest.mark.parametrize("make", [testing.random_logits, tied], ids=["distinct", "ties"])
def test_matches_stable_argsort(make, shape, dtype):
    x = make(0, shape).astype(dtype)
    x[..., 1] = -np.inf
    select = jax.jit(top_k, static_argnums=1)
    for k in (1, 3, shape[-1]):
        values, indices = select(jnp.asarray(x), k)
        want_values, want_indices = oracle_top_k(x, k)
        assert values.dtype == dtype and indices.dtype == jnp.int32
        np.testing.assert_array_equal(indices, want_indices)
        np.testing.assert_array_equal(np.asarray(values, np.float64), want_values)


def test_float64_and_vmap():
    x = tied(1, (3, 4, 10))
    with jax.enable_x64(True):
        values, indices = jax.jit(jax.vmap(jax.vmap(lambda row: top_k(row, 4))))(x)
        assert values.dtype == jnp.float64
    want_values, want_indices = oracle_top_k(x, 4)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(values, want_values)
    # Mapped over the last axis: the rows are then along axis 1.
    across = jax.jit(jax.vmap(lambda rows: top_k(rows, 2)[1], in_axes=-1))(x)
    np.testing.assert_array_equal(across, oracle_top_k(np.moveaxis(x, -1, 0), 2)[1])


def test_gradient_lands_on_the_selected_entries():
    x = tied(2, (4, 10))
    weights = testing.random_logits(3, (4, 3))
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(lambda x: jnp.sum(weights * top_k(x, 3)[0])))(x)
        batched = jax.vmap(jax.grad(lambda row, w: jnp.sum(w * top_k(row, 3)[0])))(x, weights)
    np.testing.assert_array_equal(grad, oracle_grad(x, weights, 3))
    np.testing.assert_array_equal(batched, oracle_grad(x, weights, 3))


def test_gradient_inside_shard_map_with_varying_axes():
    # The indices vary over the mesh axis inside shard_map; their (zero) tangent must too.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    x = tied(2, (4, 10))
    weights = testing.random_logits(3, (4, 3))
    loss = lambda x, w: jnp.sum(w * top_k(x, 3)[0])  # noqa: E731
    spec = jax.sharding.PartitionSpec("data")
    grad = jax.jit(jax.shard_map(jax.grad(loss), mesh=mesh, in_specs=(spec, spec), out_specs=spec))(
        x, weights
    )
    np.testing.assert_allclose(grad, oracle_grad(x, weights, 3), rtol=1e-6)


def test_finite_differences_forward_and_reverse():
    x = testing.random_logits(4, (3, 8))  # distinct entries: top_k is smooth around them
    testing.check_grads_f64(lambda x: top_k(x, 3)[0], (x,), order=2, modes=("fwd", "rev"))


def test_sliced_outputs_keep_the_topk_on_cpu():
    """XLA:CPU turns a TopK whose outputs are sliced into a full sort (see _read_top_k)."""
    x = jnp.zeros((16, 100))
    hlo = jax.jit(lambda x: top_k(x, 6)[0][..., -1]).lower(x).compile().as_text()
    assert "TopK" in hlo and not re.search(r"\bsort\(", hlo)


_SHARDED = """
import json, re
import jax, jax.numpy as jnp, ml_dtypes, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxloss._selection import argsort, top_k
from tests.test_selection import oracle_grad, oracle_top_k, tied
from tests.testing import random_logits

assert jax.device_count() == 4
COLLECTIVE = re.compile(
    r"= ([^=]+?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\\("
)
failures = []


def check(where, x, k, spec, mesh, *, hlo=True):
    sharding = NamedSharding(mesh, spec)
    weights = random_logits(5, x.shape[:-1] + (k,)).astype(x.dtype)
    placed = jax.device_put(jnp.asarray(x), sharding)
    step = jax.jit(
        jax.value_and_grad(lambda x: jnp.sum(weights * top_k(x, k)[0]).astype(jnp.float32)),
        out_shardings=(None, sharding),  # as a train step places the gradient like its parameter
    ).lower(placed).compile()
    forward = jax.jit(lambda x: top_k(x, k)).lower(placed).compile()
    values, indices = forward(placed)
    want_values, want_indices = oracle_top_k(x, k)
    if not (np.array_equal(indices, want_indices) and np.array_equal(np.asarray(values, np.float64), want_values)):
        failures.append(f"{where}: top_k differs from the oracle")
    _, grad = step(placed)
    if not np.array_equal(np.asarray(grad, np.float64), oracle_grad(x, weights, k)):
        failures.append(f"{where}: gradient differs from the oracle")
    if not hlo:
        return
    # What crosses devices per local row: k candidates per class shard, never the row.
    shards = mesh.shape["model"]
    local_rows = x.size // x.shape[-1] // mesh.shape["data"]
    for compiled in (forward, step):
        for shape, op in COLLECTIVE.findall(compiled.as_text()):
            for dims in re.findall(r"\\[([\\d,]*)\\]", shape):
                size = np.prod([int(d) for d in dims.split(",") if d])
                if size > local_rows * k * shards:
                    failures.append(f"{where}: {op} [{dims}] of a {x.shape} input")


for d, m in ((2, 2), (1, 4)):
    mesh = Mesh(np.array(jax.devices()).reshape(d, m), ("data", "model"))
    for k in (1, 3):
        check(f"{d}x{m} float32 k={k}", random_logits(0, (8, 64)).astype(np.float32), k, P("data", "model"), mesh)
    for dtype in (np.float32, ml_dtypes.bfloat16):
        where = f"{d}x{m} {np.dtype(dtype).name} ties"
        check(where, tied(0, (8, 64)).astype(dtype), 3, P("data", "model"), mesh)
    check(f"{d}x{m} 3-d ties", tied(1, (4, 2, 64)).astype(np.float32), 3, P("data", None, "model"), mesh)
    # Fewer than k classes per shard: every class is a candidate.
    check(f"{d}x{m} k > shard", tied(2, (8, 8)).astype(np.float32), 5, P("data", "model"), mesh, hlo=False)

mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
x = tied(3, (8, 64)).astype(np.float32)
# Classes split over both mesh axes, and a population vmapped over class-sharded logits.
check("2x2 classes over both axes", x, 3, P(None, ("data", "model")), mesh, hlo=False)
population = jax.device_put(jnp.asarray(x.reshape(2, 4, 64)), NamedSharding(mesh, P(None, "data", "model")))
if not np.array_equal(jax.jit(jax.vmap(lambda x: top_k(x, 3)[1]))(population), oracle_top_k(x, 3)[1].reshape(2, 4, 3)):
    failures.append("vmap over class-sharded logits differs from the oracle")
# Partly manual shard_map (classes on an auto axis): the whole row, still right.
per_data_shard = jax.jit(jax.shard_map(lambda x: top_k(x, 3)[1], mesh=mesh, in_specs=P("data"), out_specs=P("data"), axis_names={"data"}))
if not np.array_equal(per_data_shard(jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data", "model")))), oracle_top_k(x, 3)[1]):
    failures.append("partly manual shard_map differs from the oracle")
# GSPMD, the partitioner before Shardy, goes through infer_sharding_from_operands.
jax.config.update("jax_use_shardy_partitioner", False)
check("2x2 GSPMD", x, 3, P("data", "model"), mesh)
print(json.dumps(failures))
"""


def test_class_sharded_top_k_matches_and_moves_only_candidates():
    """On 2 x 2 and 1 x 4 meshes with the classes on 'model': lax.top_k's values, indices (ties
    included) and gradient, in float32 and bfloat16, and no collective larger than k candidates
    per class shard and row."""
    out = testing.run_on_devices(_SHARDED, num_devices=4)
    failures = json.loads(out.strip().splitlines()[-1])
    assert failures == [], "\n".join(failures)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.int32])
@pytest.mark.parametrize("shape", [(1,), (2,), (5, 7), (2, 3, 64), (3, 99), (2, 129)])
def test_argsort_is_numpys_stable_argsort(shape, dtype):
    # Ties everywhere, and the float specials: NaN of both signs last (in index order, as NumPy
    # and jnp.argsort put them), -0.0 tied with 0.0, the infinities at the ends.
    x = tied(2, shape).astype(np.float64)
    if dtype != np.int32:
        flat = x.reshape(-1)
        specials = [np.nan, -np.nan, np.inf, -np.inf, -0.0]
        picks = np.random.default_rng(3).integers(0, flat.size, 2 * len(specials))
        flat[picks] = np.tile(specials, 2)
    x = x.astype(dtype)
    got = jax.jit(argsort)(jnp.asarray(x))
    assert got.dtype == jnp.argsort(x).dtype and got.shape == shape
    np.testing.assert_array_equal(got, np.argsort(x, axis=-1, kind="stable"))


def test_argsort_compiles_to_a_network_on_cpu_and_batches():
    x = jnp.asarray(tied(4, (3, 4, 10)))
    hlo = jax.jit(argsort).lower(x).compile().as_text()
    assert " sort(" not in hlo  # XLA:CPU's sort is what the network replaces
    np.testing.assert_array_equal(jax.vmap(argsort)(x), np.argsort(x, axis=-1, kind="stable"))
    with jax.enable_x64(True):
        wide = jnp.asarray(np.asarray(x, np.float64))
        assert argsort(wide).dtype == jnp.argsort(wide).dtype == jnp.int64
