"""Class-sharded logits: the class axis split over a ``'model'`` mesh axis (many classes).

With the logits placed as ``P('data', 'model')``, the labels as ``P('data')`` and per-class vectors
as ``P('model')``, every loss gives the single-device values and gradients, returns the gradient
sharded like the logits, and its compiled program never moves a full row of classes onto one
device, in both forms:

- ``jit``: the loss as it is under ``jax.jit``; XLA splits the work (log-sum-exps combine by max
  and sum, the label's logit is a masked sum, top-k selects from each shard's candidates);
- ``shard_map``: the loss inside ``jax.shard_map`` given ``class_axis_name='model'``, each device
  seeing its own block of classes (``jaxloss._classes.ClassAxis`` combines the shards).

One 4-device subprocess compiles every case in both forms on a 2 (data) x 2 (model) and a 1 x 4
mesh and reports what failed per loss and form; each is then its own test. EXACT's Genz
estimator without truncation is not a case: it gathers rows (it is sequential over the sorted
competitors), and ``test_exact.py`` checks its values.
"""

from __future__ import annotations

import json

import pytest

from tests import testing

_CODE = """
import json, re
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
noise = jnp.asarray(rng.standard_normal((batch, classes, 5)), jnp.float32)
key = jax.random.key(0)

# name -> (loss of (logits, labels, arrays, **options), the arrays it takes, each with its partition
# spec). Under shard_map the options hold class_axis_name="model".
counts = {"class_counts": P("model")}
drawn = {"noise": P("data", "model", None)}


def exact(**kwargs):
    # Inside shard_map the normalization's statistics are the whole batch's with axis_name only.
    return lambda z, y, a, **o: jaxloss.exact_loss(
        z, y, **kwargs, **a, **o, **({"axis_name": "data"} if o else {}))


# (k, N, batch): EXACT's injected uniforms shard with the batch.
uniforms = jax.random.uniform(jax.random.key(1), (5, 16, batch))
CASES = {
    "cross_entropy": (
        lambda z, y, a, **o: jaxloss.get_loss("cross_entropy")(z, y, key=key, **o), {}),
    "label_smoothing": (
        lambda z, y, a, **o: jaxloss.get_loss("label_smoothing", alpha=0.1)(z, y, key=key, **o),
        {}),
    "label_relaxation": (
        lambda z, y, a, **o: jaxloss.label_relaxation_loss(z, y, alpha=0.1, **o), {}),
    "confidence_penalty": (
        lambda z, y, a, **o: jaxloss.confidence_penalty_loss(z, y, beta=0.3, **o), {}),
    "focal": (
        lambda z, y, a, **o: jaxloss.softmax_focal_loss(z, y, gamma=2.0, **a, **o),
        {"class_weights": P("model")}),
    "poly1": (lambda z, y, a, **o: jaxloss.poly1_loss(z, y, epsilon=1.0, **o), {}),
    "balanced_softmax": (
        lambda z, y, a, **o: jaxloss.balanced_softmax_loss(z, y, **a, **o), counts),
    "logit_adjusted": (
        lambda z, y, a, **o: jaxloss.logit_adjusted_loss(z, y, tau=0.7, **a, **o), counts),
    "ldam": (
        lambda z, y, a, **o: jaxloss.ldam_loss(z, y, max_m=0.5, scale=10.0, **a, **o), counts),
    "topk_svm": (lambda z, y, a, **o: jaxloss.topk_svm_loss(z, y, k=2, **o), {}),
    "smooth_topk_svm": (lambda z, y, a, **o: jaxloss.smooth_topk_svm_loss(z, y, k=2, **o), {}),
    "smooth_topk_svm_k1": (
        lambda z, y, a, **o: jaxloss.smooth_topk_svm_loss(z, y, k=1, **o), {}),
    "balanced_noised_topk": (
        lambda z, y, a, **o: jaxloss.balanced_noised_topk_loss(z, y, k=2, epsilon=1.0, **a, **o),
        drawn),
    "imbalanced_noised_topk": (
        lambda z, y, a, **o: jaxloss.imbalanced_noised_topk_loss(
            z, y, k=2, epsilon=0.01, max_m=0.2, **a, **o),
        {**drawn, **counts}),
    "exact_quadrature": (exact(method="quadrature"), {}),
    "exact_quadrature_truncated": (exact(method="quadrature", truncate_classes=5), {}),
    "exact_genz_truncated": (exact(truncate_classes=5), {"uniforms": P(None, None, "data")}),
}
values = {**per_class, "noise": noise, "uniforms": uniforms}

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


def check(fn, specs, form):
    arrays = {name: values[name] for name in specs}
    mean = lambda fn: jax.value_and_grad(lambda z, y, a: jnp.mean(fn(z, y, a)))
    ref_val, ref_grad = jax.jit(mean(fn))(z, y, arrays)
    failures = []
    for d, m in ((2, 2), (1, 4)):
        mesh = Mesh(np.array(jax.devices()).reshape(d, m), ("data", "model"))
        put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
        args = (put(z, P("data", "model")), put(y, P("data")),
                {name: put(x, specs[name]) for name, x in arrays.items()})
        loss = fn if form == "jit" else class_sharded(fn, {n: specs[n] for n in arrays}, mesh)
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
for name, (fn, specs) in CASES.items():
    for form in ("jit", "shard_map"):
        try:
            results[f"{name}/{form}"] = check(fn, specs, form)
        except Exception as error:  # one broken loss must not hide the others' results
            results[f"{name}/{form}"] = [f"{type(error).__name__}: {str(error)[:2000]}"]
print(json.dumps(results))
"""

CLOSED_FORM = (
    "cross_entropy",
    "label_smoothing",
    "label_relaxation",
    "confidence_penalty",
    "focal",
    "poly1",
    "balanced_softmax",
    "logit_adjusted",
    "ldam",
)

# Top-k from each class shard's own top k, merged: only k candidates per shard cross devices
# (jaxloss._selection.top_k).
SHARD_CANDIDATES = ("topk_svm", "exact_quadrature_truncated", "exact_genz_truncated")

# log_esf's product tree multiplies neighbouring classes, so each shard reduces its own classes;
# only the last levels' nodes (k coefficients per shard and example) and the top-k candidates cross
# devices (jaxloss.ops._esf).
ESF_TREE = ("smooth_topk_svm", "smooth_topk_svm_k1")

# EXACT's quadrature sums log-CDF terms over the whole row, the label's class excluded by a mask:
# only per-example, per-node partial sums cross devices.
CLASS_SUMS = ("exact_quadrature",)

# The noised top-k's threshold from the class-sharded top_k of every draw; its one-hot gradient is
# built from the draws themselves, so each device builds its own classes' part
# (jaxloss.ops._noised_topk).
DRAW_CANDIDATES = ("balanced_noised_topk", "imbalanced_noised_topk")


@pytest.fixture(scope="module")
def failures() -> dict[str, list[str]]:
    out = testing.run_on_devices(_CODE, num_devices=4)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("form", ["jit", "shard_map"])
@pytest.mark.parametrize(
    "name", [*CLOSED_FORM, *SHARD_CANDIDATES, *ESF_TREE, *CLASS_SUMS, *DRAW_CANDIDATES]
)
def test_class_sharded_logits_match_single_device_without_gathering_rows(failures, name, form):
    found = failures[f"{name}/{form}"]
    assert found == [], "\n".join(found)
