r"""Forward+backward time and compiled memory of every loss, relative to softmax cross-entropy.

Run:  python experiments/benchmark_losses.py [--groups=closed_form,...] [--repeats=50] [--json=out.json]

Each row times ``jax.jit(jax.value_and_grad(lambda x: loss(x, labels).mean()))`` on fixed logits:
the median over ``--repeats`` calls after a warm-up, ``block_until_ready`` on every call, each call
alternating with one of cross-entropy on the same logits. Memory is
the compiled executable's temporary buffer size (``memory_analysis().temp_size_in_bytes``), i.e. the
working memory XLA allocates besides inputs and outputs. The ratio column divides by optax's
``softmax_cross_entropy_with_integer_labels`` timed in those alternating calls.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable

import cli
import jax
import jax.numpy as jnp
import optax
from absl import flags

import jaxloss

_GROUPS = flags.DEFINE_list(
    "groups",
    None,
    "Case groups to run (default: all): registered (every loss of jaxloss.available_losses() at "
    "its spec's defaults), closed_form, smooth_topk, noised_topk, exact.",
)
_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed calls per case (median reported).")
_JSON = flags.DEFINE_string("json", "benchmark_losses.json", "Where the rows go as JSON.")

SHAPES = ((256, 10), (256, 100), (256, 1000))


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark row: a loss ``fn(logits, labels, key) -> per-example`` on one shape."""

    group: str
    name: str
    batch: int
    classes: int
    fn: Callable


def cross_entropy(logits, labels, key):
    del key
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def registered_cases() -> list[Case]:
    """Every registered loss (``jaxloss.available_losses()``) at its spec's default hyperparameters,
    called through ``jaxloss.get_loss`` as a training loop calls it."""
    cases = []
    for batch, classes in SHAPES[:2]:  # EXACT's full Genz is O(C^2): see the exact group for more
        for name in jaxloss.available_losses():
            spec = jaxloss.loss_spec(name)
            hyperparameters = spec.hyperparameters()
            if "k" in hyperparameters:
                hyperparameters["k"] = min(hyperparameters["k"], classes - 1)
            loss = jaxloss.get_loss(
                name, class_counts=jnp.arange(1.0, classes + 1.0), **hyperparameters
            )
            cases.append(
                Case("registered", name, batch, classes, lambda x, y, k, f=loss: f(x, y, key=k))
            )
    return cases


def closed_form_cases() -> list[Case]:
    counts = jnp.arange(1.0, 1001.0)
    cases = []
    for batch, classes in SHAPES:
        c = counts[:classes]
        losses = {
            "label_relaxation": lambda x, y, k: jaxloss.label_relaxation_loss(x, y, alpha=0.1),
            "confidence_penalty": lambda x, y, k: jaxloss.confidence_penalty_loss(x, y, beta=0.5),
            "softmax_focal": lambda x, y, k: jaxloss.softmax_focal_loss(x, y, gamma=2.0),
            "balanced_softmax": lambda x, y, k, c=c: jaxloss.balanced_softmax_loss(
                x, y, class_counts=c
            ),
            "logit_adjusted": lambda x, y, k, c=c: jaxloss.logit_adjusted_loss(
                x, y, class_counts=c
            ),
        }
        cases += [Case("closed_form", n, batch, classes, f) for n, f in losses.items()]
    return cases


def noised_topk_cases() -> list[Case]:
    """The pytopk rows (batch, classes, k, sample_size), and ldam_loss (closed form) for scale."""
    cases = []
    for batch, classes, k, samples in ((256, 100, 5, 10), (256, 1000, 5, 10), (256, 1000, 5, 100)):
        counts = jnp.arange(1.0, classes + 1.0)

        def balanced(x, y, key, k=k, s=samples):
            return jaxloss.balanced_noised_topk_loss(x, y, k=k, epsilon=1.0, sample_size=s, key=key)

        def imbalanced(x, y, key, k=k, s=samples, c=counts):
            return jaxloss.imbalanced_noised_topk_loss(
                x, y, class_counts=c, k=k, epsilon=0.01, max_m=0.2, sample_size=s, key=key
            )

        for name, fn in (
            ("balanced_noised_topk", balanced),
            ("imbalanced_noised_topk", imbalanced),
        ):
            cases.append(Case("noised_topk", f"{name} k={k} S={samples}", batch, classes, fn))
        if samples == 10:
            ldam = lambda x, y, key, c=counts: jaxloss.ldam_loss(x, y, class_counts=c)  # noqa: E731
            cases.append(Case("noised_topk", "ldam", batch, classes, ldam))
    return cases


def exact_cases() -> list[Case]:
    """EXACT at T = 1 (batch-normalized logits): Genz (batch, classes, N[, truncation]), quadrature."""
    cases = []
    for batch, classes, samples, truncate in (
        (256, 10, 16, None),
        (256, 100, 16, None),
        (128, 100, 64, None),
        (256, 1000, 16, 128),
    ):

        def genz(x, y, key, n=samples, t=truncate):
            return jaxloss.exact_loss(
                x, y, key=key, temperature=1.0, sample_size=n, truncate_classes=t
            )

        name = f"exact genz N={samples}" + ("" if truncate is None else f" trunc={truncate}")
        cases.append(Case("exact", name, batch, classes, genz))
    for batch, classes in SHAPES:

        def quadrature(x, y, key):
            return jaxloss.exact_loss(x, y, key=None, temperature=1.0, method="quadrature")

        cases.append(Case("exact", "exact quadrature", batch, classes, quadrature))
    return cases


def smooth_topk_cases() -> list[Case]:
    """Smooth top-k SVM (switch on, as the reference) for (batch, classes, k) and tau in {1, 0.1}."""
    cases = []
    for batch, classes, k in ((256, 10, 1), (256, 100, 5), (256, 1000, 5)):
        for tau in (1.0, 0.1):

            def smooth(x, y, key, k=k, tau=tau):
                return jaxloss.smooth_topk_svm_loss(x, y, k=k, tau=tau)

            cases.append(
                Case("smooth_topk", f"smooth_topk k={k} tau={tau}", batch, classes, smooth)
            )
        cases.append(
            Case(
                "smooth_topk",
                f"topk_svm (hard) k={k}",
                batch,
                classes,
                lambda x, y, key, k=k: jaxloss.topk_svm_loss(x, y, k=k),
            )
        )
    return cases


# Each loss family contributes one function returning its cases.
CASE_GROUPS: dict[str, Callable[[], list[Case]]] = {
    "registered": registered_cases,
    "closed_form": closed_form_cases,
    "smooth_topk": smooth_topk_cases,
    "noised_topk": noised_topk_cases,
    "exact": exact_cases,
}


def _compiled_step(fn: Callable, batch: int, classes: int):
    """A jitted forward+backward of ``mean(fn(logits, labels, key))``, its input, and temp bytes."""
    key = jax.random.key(0)
    logits = 3.0 * jax.random.normal(jax.random.key(1), (batch, classes), jnp.float32)
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, classes)

    def objective(x):
        return jnp.mean(fn(x, labels, key))

    compiled = jax.jit(jax.value_and_grad(objective)).lower(logits).compile()
    memory = compiled.memory_analysis()
    temp_bytes = int(getattr(memory, "temp_size_in_bytes", 0)) if memory is not None else 0
    return compiled, logits, temp_bytes


def measure(fn: Callable, batch: int, classes: int, repeats: int) -> tuple[float, float, int]:
    """Median ms of ``fn`` and of cross-entropy, timed call by call in turn, and fn's temp bytes.

    Interleaving makes both medians see the same machine state (frequency, other load), so their
    ratio is stable even when the absolute times drift.
    """
    steps = [_compiled_step(f, batch, classes) for f in (fn, cross_entropy)]
    times = ([], [])
    for i in range(repeats + 3):
        for (compiled, logits, _), record in zip(steps, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(compiled(logits))
            if i >= 3:  # warm-up calls are not timed
                record.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[1]), steps[0][2]


def run(groups: list[str], repeats: int) -> list[dict]:
    unknown = sorted(set(groups) - set(CASE_GROUPS))
    if unknown:
        raise ValueError(f"unknown groups {unknown}; choose from {sorted(CASE_GROUPS)}")
    rows = []
    for case in (case for g in groups for case in CASE_GROUPS[g]()):
        ms, ce_ms, temp = measure(case.fn, case.batch, case.classes, repeats)
        rows.append(
            dict(
                group=case.group,
                loss=case.name,
                batch=case.batch,
                classes=case.classes,
                ms=ms,
                ce_ms=ce_ms,
                ratio=ms / ce_ms,
                temp_bytes=temp,
            )
        )
        print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    return (
        f"| {row['loss']:<40} | {row['batch']:>5}x{row['classes']:<5} | {row['ms']:>9.3f} | "
        f"{row['ce_ms']:>7.3f} | {row['ratio']:>7.1f}x | {row['temp_bytes'] / 2**20:>9.2f} |"
    )


def main(argv):
    del argv
    groups = _GROUPS.value or list(CASE_GROUPS)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {platform.processor()}")
    print(
        f"| {'loss':<40} | {'shape':<11} | {'ms (f+b)':>9} | {'CE ms':>7} | {'vs CE':>8} | "
        f"{'temp MiB':>9} |"
    )
    print(f"|{'-' * 42}|{'-' * 13}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 11}|")
    rows = run(groups, _REPEATS.value)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    cli.run(main, epilogue=f"Groups: {', '.join(CASE_GROUPS)}.")
