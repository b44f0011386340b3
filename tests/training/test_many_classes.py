"""Class-sharded training: the heads' class axis split over the 'model' mesh axis.

One 4-device subprocess trains the many-class config, shrunk, with cross-entropy and the two top-k
losses on a 2 (data) x 2 (model) mesh and on 4 data-parallel devices, and checks that the runs
agree and that the head's weights, their optimizer moments and the logits are split by class.
"""

import json

import pytest

from tests.testing import run_on_devices
from tests.training.tiny import SUBPROCESS_PRELUDE

LOSSES = ("cross_entropy", "smooth_topk_svm", "balanced_noised_topk")

_CODE = (
    SUBPROCESS_PRELUDE
    + f"LOSSES = {LOSSES!r}"
    + """
import json, tempfile
import jax, numpy as np
from jax.sharding import PartitionSpec as P
from configs import many_classes
from jaxloss.training import train_and_evaluate
from jaxloss.training.mesh import make_mesh
from jaxloss.training.population import make_population
from jaxloss.training.train import make_steps

def config(loss, model_parallel):
    c = many_classes.get_config(loss)
    c.data.options.update(num_classes=64, num_features=8, train_examples=1024, eval_examples=256)
    c.update(num_epochs=2, batch_size=128, eval_batch_size=256, model_parallel=model_parallel,
             checkpoint_every_epochs=0, progress_bar=False, tensorboard=False, top_k=5)
    return c

report = {}
for loss in LOSSES:
    runs = {m: train_and_evaluate(config(loss, m), tempfile.mkdtemp()) for m in (1, 2)}
    report[loss] = {
        "worst": max(
            float(np.max(np.abs(np.asarray(a[key], float) - np.asarray(b[key], float))))
            for a, b in zip(runs[1]["history"], runs[2]["history"])
            for key in a
        ),
        "test_top5": float(np.mean(runs[2]["history"][-1]["test/top5_accuracy"])),
    }
c = config("cross_entropy", 2)
steps = make_steps(c, num_classes=64, input_shape=(8,), class_counts=np.ones(64),
                   steps_per_epoch=8, mesh=make_mesh(model_parallel=2))
state = steps.init(make_population(c).keys())
head = state["params"]["head"]["linear"]
report["kernel"] = str(head["kernel"][...].sharding.spec)
report["bias"] = str(head["bias"][...].sharding.spec)
moments = [str(x.sharding.spec) for x in jax.tree.leaves(state["opt"]) if x.ndim == 3]
report["moments"] = moments
logits = steps.predict(state, np.zeros((256, 8), np.float32))
report["logits"] = str(logits.sharding.spec)
print(json.dumps(report))
"""
)


@pytest.fixture(scope="module")
def report():
    return json.loads(run_on_devices(_CODE, num_devices=4, timeout=600).strip().splitlines()[-1])


@pytest.mark.parametrize("loss", LOSSES)
def test_class_sharded_training_equals_data_parallel(report, loss):
    assert report[loss]["worst"] < 1e-4, report[loss]
    assert 0.0 < report[loss]["test_top5"] <= 1.0


def test_head_moments_and_logits_are_split_by_class(report):
    assert report["kernel"] == "P(None, None, 'model')"
    assert report["bias"] == "P(None, 'model')"
    # Adam's two moments of the kernel follow it.
    assert report["moments"] == ["P(None, None, 'model')"] * 2
    assert "'model'" in report["logits"]
