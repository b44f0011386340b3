"""ClassAxis: reductions, selections and label reads over classes split across shard_map devices.

Each method inside ``shard_map`` (classes split over 4 devices) must equal its whole-row form
(the plain jnp / lax op), values and gradients, including ties that straddle shards.
"""

from __future__ import annotations

import json

import pytest

from tests import testing

_CODE = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P
from jaxloss._classes import WHOLE, ClassAxis

mesh = Mesh(np.array(jax.devices()), ("model",))
rng = np.random.default_rng(0)
# Small integers: ties within and across the 4 shards of 4 classes each.
x = jnp.asarray(rng.integers(-3, 4, (5, 16)), jnp.float32).at[0, 5].set(-jnp.inf)
# Signed zeros: top_k ranks +0.0 above -0.0, and the gathered candidates must keep the sign.
row = [1, -0.0, 2, 3, 0.0, 5, 6, 7] + [-1] * 8  # the 7th largest: +0.0, index 4
x = x.at[1].set(jnp.asarray(row, jnp.float32))
labels = jnp.asarray([0, 5, 15, 8, 3])
vector = jnp.asarray(rng.standard_normal(16), jnp.float32)
split = ClassAxis("model")

def both(method, *extra_specs):
    def run(classes, x, *extra):
        return method(classes, x, *extra)
    mapped = jax.shard_map(
        lambda x, *extra: run(split, x, *extra), mesh=mesh,
        in_specs=(P(None, "model"), *extra_specs), out_specs=P())
    return (lambda *a: run(WHOLE, *a)), mapped

checks = {
    "sum": (lambda c, x: c.sum(x * x), ()),
    "max": (lambda c, x: c.max(x), ()),
    "min": (lambda c, x: c.min(jnp.where(x == -jnp.inf, 0.0, x)), ()),
    "label_value": (lambda c, x, y: c.label_value(x, y), (P(),)),
    "label_value_bool": (lambda c, x, y: c.label_value(x > 0, y).astype(jnp.float32), (P(),)),
    "take": (lambda c, x, y, v: c.take(v, y), (P(), P("model"))),
    "top_k_values": (lambda c, x: c.top_k(x, 7)[0], ()),
    "top_k_indices": (lambda c, x: c.top_k(x, 7)[1].astype(jnp.float32), ()),
    "global_size": (lambda c, x: jnp.full((), c.global_size(x.shape[-1]), jnp.float32), ()),
    "whole": (lambda c, x: c.whole(x), ()),
    "whole_bool": (lambda c, x: c.whole(x > 0).astype(jnp.float32), ()),
}
arguments = {"label_value": (labels,), "label_value_bool": (labels,), "take": (labels, vector)}
results = {}
for name, (method, specs) in checks.items():
    whole, mapped = both(method, *specs)
    extra = arguments.get(name, ())
    want, got = jax.jit(whole)(x, *extra), jax.jit(mapped)(x, *extra)
    problems = [] if np.array_equal(want, got) else [f"value {got.tolist()} != {want.tolist()}"]
    if name in ("sum", "label_value", "top_k_values", "whole"):
        finite = jnp.where(jnp.isfinite(x), x, 0.0)
        g_want = jax.grad(lambda x: jnp.sum(jnp.sin(whole(x, *extra))))(finite)
        g_got = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(mapped(x, *extra)))))(finite)
        if not np.allclose(g_want, g_got, rtol=1e-6, atol=1e-7):
            problems.append(f"gradient {g_got.tolist()} != {g_want.tolist()}")
    results[name] = problems
print(json.dumps(results))
"""

METHODS = (
    "sum",
    "max",
    "min",
    "label_value",
    "label_value_bool",
    "take",
    "top_k_values",
    "top_k_indices",
    "global_size",
    "whole",
    "whole_bool",
)


@pytest.fixture(scope="module")
def failures() -> dict[str, list[str]]:
    out = testing.run_on_devices(_CODE, num_devices=4)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("method", METHODS)
def test_split_class_axis_equals_whole_rows(failures, method):
    assert failures[method] == [], "\n".join(failures[method])
