"""Class-sharded logits: the class axis split over a ``'model'`` mesh axis (many classes).

With the logits placed as ``P('data', 'model')``, the labels as ``P('data')`` and per-class vectors
as ``P('model')``, every loss gives the single-device values and gradients, returns the gradient
sharded like the logits, and its compiled program never moves a full row of classes onto one
device, in both forms:

- ``jit``: the loss as it is under ``jax.jit``; XLA splits the work (log-sum-exps combine by max
  and sum, the label's logit is a masked sum, top-k selects from each shard's candidates);
- ``shard_map``: the loss inside ``jax.shard_map`` given ``class_axis_name='model'``, each device
  seeing its own block of classes (``jaxloss._classes.ClassAxis`` combines the shards).

The cases are every registered loss, read from its spec (its defaults, its reproducible noise or
method, its class counts), so a new loss is covered without touching this file; and variants that
take other paths: the closed-form top-1 smooth SVM, per-class focal weights, EXACT with truncation.
How the shards combine: closed forms by sums and maxima; the top-k losses and EXACT's truncation
merge each shard's k candidates (``jaxloss._selection.top_k``); ``log_esf`` multiplies each shard's
product-tree root; EXACT's quadrature sums log-CDF terms; the noised top-k selects each draw's k-th
from the shards' candidates and builds its one-hot gradient on each device's own classes.

One 4-device subprocess compiles every case in both forms on a 2 (data) x 2 (model) and a 1 x 4
mesh and reports what failed per loss and form; each is then its own test. EXACT's Genz
estimator without truncation is not a case (the registered EXACT is its deterministic quadrature):
it gathers rows (it is sequential over the sorted competitors), and ``test_exact.py`` checks its
values.
"""

from __future__ import annotations

import json

import pytest

import jaxloss
from tests import testing

_CODE = """
import inspect, json, re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jaxloss

assert jax.device_count() == 4
batch, classes = 8, 64
rng = np.random.default_rng(0)
z = jnp.asarray(3 * rng.standard_normal((batch, classes)), jnp.float32)
y = jnp.asarray(rng.integers(0, classes, batch))
per_class = {
    "class_counts": jnp.asarray(np.arange(1.0, classes + 1) * 10, jnp.float32),
    "class_weights": jnp.asarray(np.linspace(0.5, 2.0, classes), jnp.float32),
}
key = jax.random.key(0)
# Each array a loss may take, with its partition spec. Under shard_map the options hold
# class_axis_name="model".
SPECS = {
    "class_counts": P("model"),
    "class_weights": P("model"),
    "noise": P("data", "model", None),
    "uniforms": P(None, None, "data"),
}


def registered(name, **overrides):
    # A registered loss at its spec's defaults (top-k at k = 2), its randomness made reproducible
    # by the spec (injected noise that shards with the logits, or a deterministic method).
    spec = jaxloss.loss_spec(name)
    kwargs = spec.hyperparameters()
    kwargs.update({"k": 2} if "k" in kwargs else {})
    if spec.reproducible is not None:
        kwargs.update(spec.reproducible((batch, classes), rng, kwargs))
    elif spec.stochastic:
        kwargs["key"] = key
    kwargs.update(overrides)
    arrays = {n: kwargs.pop(n) for n in list(kwargs) if n in SPECS}
    if spec.needs_class_counts:
        arrays["class_counts"] = per_class["class_counts"]
    # A loss that couples the examples (EXACT's statistics) takes the mapped batch axis.
    couples = "axis_name" in inspect.signature(spec.fn).parameters

    def fn(z, y, a, **o):
        return spec.fn(z, y, **kwargs, **a, **o, **({"axis_name": "data"} if o and couples else {}))

    return fn, arrays


# name -> (loss of (logits, labels, arrays, **options), the arrays it takes): every registered loss,
# and variants of some that take other paths (k = 1, truncation, per-class weights).
CASES = {name: registered(name) for name in jaxloss.available_losses()}
CASES["smooth_topk_svm_k1"] = registered("smooth_topk_svm", k=1)
CASES["focal_weighted"] = registered("focal", class_weights=per_class["class_weights"])
CASES["exact_quadrature_truncated"] = registered("exact", truncate_classes=5)
# (k, N, batch): EXACT's injected uniforms shard with the batch.
CASES["exact_genz_truncated"] = registered(
    "exact", method="genz", truncate_classes=5,
    uniforms=jax.random.uniform(jax.random.key(1), (5, 16, batch)))

COLLECTIVE = re.compile(
    r"= ([^=]+?) (all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)(?:-start)?\\("
)


def full_rows(hlo, rows):
    # A collective result holding at least a full row of classes (or of the C - 1 competitors)
    # per local example: the logits, or something as large, materialized on one device.
    found = []
    for shape, op in COLLECTIVE.findall(hlo):
        for dims in re.findall(r"\\[([\\d,]*)\\]", shape):
            size = np.prod([int(d) for d in dims.split(",") if d])
            if size >= rows * (classes - 1):
                found.append(f"{op} f32[{dims}]")
    return found


def class_sharded(fn, specs, mesh):
    # fn under shard_map, each device holding a block of the classes of its rows.
    return jax.shard_map(
        lambda z, y, a: fn(z, y, a, class_axis_name="model"),
        mesh=mesh,
        in_specs=(P("data", "model"), P("data"), specs),
        out_specs=P("data"),
    )


def check(fn, arrays, form):
    specs = {name: SPECS[name] for name in arrays}
    mean = lambda fn: jax.value_and_grad(lambda z, y, a: jnp.mean(fn(z, y, a)))
    ref_val, ref_grad = jax.jit(mean(fn))(z, y, arrays)
    failures = []
    for d, m in ((2, 2), (1, 4)):
        mesh = Mesh(np.array(jax.devices()).reshape(d, m), ("data", "model"))
        put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
        args = (put(z, P("data", "model")), put(y, P("data")),
                {name: put(x, specs[name]) for name, x in arrays.items()})
        loss = fn if form == "jit" else class_sharded(fn, specs, mesh)
        compiled = jax.jit(mean(loss)).lower(*args).compile()
        val, grad = compiled(*args)
        where = f"{d}x{m}"
        if not np.allclose(val, ref_val, rtol=1e-5, atol=0):
            failures.append(f"{where}: value {float(val)} != {float(ref_val)}")
        if not np.allclose(grad, ref_grad, rtol=1e-5, atol=1e-7):
            failures.append(f"{where}: gradient off by {float(np.abs(grad - ref_grad).max())}")
        if not grad.sharding.is_equivalent_to(args[0].sharding, 2):
            failures.append(f"{where}: gradient sharded {grad.sharding.spec}")
        failures += [f"{where}: {c}" for c in full_rows(compiled.as_text(), batch // d)]
    return failures


results = {}
for name, (fn, arrays) in CASES.items():
    for form in ("jit", "shard_map"):
        try:
            results[f"{name}/{form}"] = check(fn, arrays, form)
        except Exception as error:  # one broken loss must not hide the others' results
            results[f"{name}/{form}"] = [f"{type(error).__name__}: {str(error)[:2000]}"]
print(json.dumps(results))
"""

# Variants of registered losses that take other code paths.
VARIANTS = (
    "smooth_topk_svm_k1",
    "focal_weighted",
    "exact_quadrature_truncated",
    "exact_genz_truncated",
)


@pytest.fixture(scope="module")
def failures() -> dict[str, list[str]]:
    out = testing.run_on_devices(_CODE, num_devices=4)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("form", ["jit", "shard_map"])
@pytest.mark.parametrize("name", [*jaxloss.available_losses(), *VARIANTS])
def test_class_sharded_logits_match_single_device_without_gathering_rows(failures, name, form):
    found = failures[f"{name}/{form}"]
    assert found == [], "\n".join(found)
