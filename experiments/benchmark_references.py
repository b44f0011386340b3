r"""The reference implementations side by side with jaxloss on the same CPU, in one process.

Run:  pip install "jaxloss[benchmark]"   # torch (CPU), pytopk, and `future` for the smooth-topk original
      python experiments/benchmark_references.py \
          --smooth_topk_path=/path/to/smooth-topk --exact_path=/path/to/exact [--rounds=3]

References: ``pytopk.BalNoisedTopK`` (PyPI) for the noised top-k loss; the smooth top-k SVM
(``topk.svm.SmoothTopkSVM``, oval-group/smooth-topk) and EXACT (``exact_pytorch.EXACTLoss``,
tinkoff-ai/exact) are not on PyPI: clone them and pass the checkouts (or have them importable).
A reference that does not import is reported and its rows skipped.

Each row times forward + backward of the batch-mean loss: the reference's ``loss.backward()`` on a
fresh leaf tensor, and ``jax.jit(jax.value_and_grad(...))`` of jaxloss on the same scores, with
optax's softmax cross-entropy as a third. The three run in turn, call by call, so they see the same
machine load; each of ``--rounds`` rounds takes the median of ``--repeats`` calls of each, and the
table gives the median over rounds (with the rounds' range). The smooth top-k rows also check that
both losses agree (they are deterministic): ``value_diff`` in the JSON rows.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import cli
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from absl import app, flags

import jaxloss

_ROUNDS = flags.DEFINE_integer(
    "rounds", 3, "Rounds per row (the median of their medians is reported)."
)
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls of each function per round.")
_SMOOTH_TOPK_PATH = flags.DEFINE_string(
    "smooth_topk_path", None, "A checkout of oval-group/smooth-topk (its `topk` package)."
)
_EXACT_PATH = flags.DEFINE_string(
    "exact_path", None, "A checkout of tinkoff-ai/exact (its `src/exact_pytorch` package)."
)
_ONLY = flags.DEFINE_list("only", None, "Run only these references: smooth_topk, exact, pytopk.")
_SHAPE = flags.DEFINE_list(
    "shape", None, "BATCH,CLASSES for every row instead of its own (a quick check of the script)."
)
_JSON = flags.DEFINE_string("json", None, "Where the rows go as JSON (none by default).")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads",
    None,
    "torch.set_num_threads (default: torch's own). On a loaded machine 1, with the process pinned "
    "to one core (taskset -c 0), keeps torch's OpenMP threads from waiting on each other.",
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One comparison: ``reference(scores, labels)`` and ``ours(logits, labels, key)`` return the
    batch-mean loss of the same scores (torch tensors for the first, JAX arrays for the second)."""

    reference: str
    loss: str
    setting: str
    batch: int
    classes: int
    make_reference: Callable[[object], Callable]
    ours: Callable
    deterministic: bool = False


def _import(module: str, paths: tuple[str, ...]):
    """``module`` imported (after putting ``paths`` first on ``sys.path``), or the error's text."""
    for path in reversed(paths):
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)
    try:
        return importlib.import_module(module)
    except ImportError as error:
        return f"{type(error).__name__}: {error}"


def references() -> dict[str, object]:
    """Each reference's module, or why it did not import."""
    smooth = (_SMOOTH_TOPK_PATH.value,) if _SMOOTH_TOPK_PATH.value else ()
    exact = (_EXACT_PATH.value, os.path.join(_EXACT_PATH.value, "src")) if _EXACT_PATH.value else ()
    return {
        "smooth_topk": _import("topk.svm", smooth),
        "exact": _import("exact_pytorch", exact),
        "pytopk": _import("pytopk", ()),
    }


def rows(modules: dict[str, object]) -> list[Row]:
    """The comparisons of the references that imported (issue 23's table, and pytopk's small sizes)."""
    out = []
    if not isinstance(modules["smooth_topk"], str):
        svm = modules["smooth_topk"]
        for batch, classes, tau in ((256, 100, 1.0), (256, 1000, 1.0), (256, 1000, 0.1)):

            def make(classes, tau=tau, svm=svm):
                criterion = svm.SmoothTopkSVM(classes, k=5, tau=tau)
                return lambda scores, labels: criterion(scores, labels)

            def ours(x, y, key, tau=tau):
                return jaxloss.smooth_topk_svm_loss(x, y, k=5, tau=tau).mean()

            setting = f"k = 5, τ = {tau:g}"
            out.append(
                Row("smooth_topk", "smooth top-k SVM", setting, batch, classes, make, ours, True)
            )
    if not isinstance(modules["exact"], str):
        exact = modules["exact"]
        for batch, classes in ((256, 10), (256, 100)):

            def make(classes, exact=exact):
                criterion = exact.EXACTLoss(sample_size=16)
                # std given: the logits are standardized over the batch, then divided by it (T = 1).
                return lambda scores, labels: criterion(scores, labels, std=torch.ones(()))

            def ours(x, y, key):
                return jaxloss.exact_loss(x, y, key=key, temperature=1.0, sample_size=16).mean()

            out.append(Row("exact", "EXACT, Genz", "16 samples", batch, classes, make, ours))
    if not isinstance(modules["pytopk"], str):
        pytopk = modules["pytopk"]
        for batch, classes, samples in (
            (256, 10, 10),
            (64, 100, 10),
            (256, 100, 10),
            (256, 1000, 10),
            (256, 1000, 100),
        ):

            def make(classes, samples=samples, pytopk=pytopk):
                criterion = pytopk.BalNoisedTopK(
                    k=min(5, classes - 1), epsilon=1.0, n_sample=samples
                )
                return lambda scores, labels: criterion(scores, labels)

            def ours(x, y, key, samples=samples):
                k = min(5, x.shape[-1] - 1)
                loss = jaxloss.balanced_noised_topk_loss(
                    x, y, k=k, epsilon=1.0, sample_size=samples, key=key
                )
                return loss.mean()

            setting = f"k = 5, {samples} samples"
            out.append(Row("pytopk", "balanced noised top-k", setting, batch, classes, make, ours))
    return out


def _median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def compare(row: Row, rounds: int, repeats: int) -> dict:
    """Interleaved timings of the reference, jaxloss and optax's cross-entropy on one row."""
    rng = np.random.default_rng(0)
    scores = (3.0 * rng.standard_normal((row.batch, row.classes))).astype(np.float32)
    labels = rng.integers(0, row.classes, row.batch)
    torch_scores, torch_labels = torch.from_numpy(scores), torch.from_numpy(labels)
    criterion = row.make_reference(row.classes)

    def reference():
        leaf = torch_scores.clone().requires_grad_(True)
        loss = criterion(leaf, torch_labels)
        loss.backward()
        return loss

    x, y = jnp.asarray(scores), jnp.asarray(labels)
    ours = jax.jit(jax.value_and_grad(lambda x, key: row.ours(x, y, key)))
    cross_entropy = jax.jit(
        jax.value_and_grad(
            lambda x, key: optax.softmax_cross_entropy_with_integer_labels(x, y).mean()
        )
    )
    key = jax.random.key(0)
    calls = {
        "reference": reference,
        "jaxloss": lambda: jax.block_until_ready(ours(x, key)),
        "cross_entropy": lambda: jax.block_until_ready(cross_entropy(x, key)),
    }
    for call in calls.values():  # compile and warm up
        call()
        call()
    medians = {name: [] for name in calls}
    for _ in range(rounds):
        times = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        for name in calls:
            medians[name].append(_median_ms(times[name]))
    result = dict(
        reference=row.reference,
        loss=row.loss,
        setting=row.setting,
        batch=row.batch,
        classes=row.classes,
        **{f"{name}_ms": statistics.median(m) for name, m in medians.items()},
        **{f"{name}_rounds_ms": m for name, m in medians.items()},
    )
    result["speedup"] = result["reference_ms"] / result["jaxloss_ms"]
    result["vs_cross_entropy"] = result["jaxloss_ms"] / result["cross_entropy_ms"]
    if row.deterministic:
        theirs = float(reference().detach())
        result["value_diff"] = abs(float(ours(x, key)[0]) - theirs) / max(abs(theirs), 1e-30)
    return result


def _range(values: list[float]) -> str:
    low, high = min(values), max(values)
    digits = 2 if high < 10 else 1 if high < 100 else 0
    return (
        f"{low:.{digits}f}"
        if f"{low:.{digits}f}" == f"{high:.{digits}f}"
        else (f"{low:.{digits}f}–{high:.{digits}f}")
    )


def format_row(result: dict) -> str:
    return (
        f"| {result['loss']}, {result['setting']} | {result['batch']} × {result['classes']} | "
        f"{_range(result['reference_rounds_ms'])} | {_range(result['jaxloss_rounds_ms'])} | "
        f"{result['speedup']:.1f}× | {result['vs_cross_entropy']:.1f}× |"
    )


def main(argv):
    del argv
    if _TORCH_THREADS.value is not None:
        torch.set_num_threads(_TORCH_THREADS.value)
    modules = references()
    selected = _ONLY.value or list(modules)
    unknown = sorted(set(selected) - set(modules))
    if unknown:
        raise app.UsageError(f"--only takes {', '.join(modules)}; got {', '.join(unknown)}.")
    for name, module in modules.items():
        if name in selected and isinstance(module, str):
            print(f"{name}: not run ({module})")
    todo = [row for row in rows(modules) if row.reference in selected]
    if _SHAPE.value:
        try:
            batch, classes = (int(v) for v in _SHAPE.value)
        except ValueError:
            raise app.UsageError(f"--shape takes BATCH,CLASSES; got {_SHAPE.value}.") from None
        # Rows that differed only in their shape are one row now.
        todo = list(
            {
                (row.reference, row.setting): dataclasses.replace(row, batch=batch, classes=classes)
                for row in todo
            }.values()
        )
    print(
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; medians of "
        f"{_ROUNDS.value} rounds x {_REPEATS.value} calls (round range)"
    )
    print("| loss | batch × classes | reference ms | jaxloss ms | jaxloss faster by | × optax CE |")
    print("|---|---|---|---|---|---|")
    results = []
    for row in todo:
        results.append(compare(row, _ROUNDS.value, _REPEATS.value))
        print(format_row(results[-1]), flush=True)
        if _JSON.value:
            with open(_JSON.value, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    cli.run(main, epilogue="References: smooth_topk, exact, pytopk.")
