r"""Forward+backward time and compiled memory of every loss, relative to softmax cross-entropy.

Run:  python experiments/benchmark_losses.py [--groups=closed_form,...] [--repeats=50] [--json=out.json]
      python experiments/benchmark_losses.py --scaling [--batch=1024] [--classes=1000,10000,100000]

Each row times ``jax.jit(jax.value_and_grad(lambda x: loss(x, labels).mean()))`` on fixed logits:
the median over ``--repeats`` calls after a warm-up, ``block_until_ready`` on every call, each call
alternating with one of cross-entropy on the same logits. Memory is
the compiled executable's temporary buffer size (``memory_analysis().temp_size_in_bytes``), i.e. the
working memory XLA allocates besides inputs and outputs. The ratio column divides by optax's
``softmax_cross_entropy_with_integer_labels`` timed in those alternating calls. A row stops
timing after ``--max_seconds`` (at least three timed calls), so that the largest shapes finish,
and a step whose compiled working memory exceeds ``--max_temp_gib`` is not run (times NaN).

``--scaling`` times every registered loss at one batch and several class counts instead, and fits
the exponent a of time ~ C^a (least squares on log-log over the class counts) and the same for the
compiled temporary memory: a loss whose time exponent exceeds 1.1, or whose memory grows faster
than linearly (exponent above 1.1), is flagged, and so is one whose ratio to cross-entropy grows
faster than C^0.1 (on a CPU cross-entropy's own exponent exceeds 1 once the logits leave the
caches, so the ratio's exponent a - a(CE) is the one that tells a loss's own growth).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import cli
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import jaxloss

_GROUPS = flags.DEFINE_list(
    "groups",
    None,
    "Case groups to run (default: all): registered (every loss of jaxloss.available_losses() at "
    "its spec's defaults), closed_form, smooth_topk, noised_topk, exact.",
)
_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed calls per case (median reported).")
_JSON = flags.DEFINE_string("json", "benchmark_losses.json", "Where the rows go as JSON.")
_MAX_SECONDS = flags.DEFINE_float(
    "max_seconds", 20.0, "Stop timing a row after this long (it still gets 3 timed calls)."
)
_MAX_TEMP_GIB = flags.DEFINE_float(
    "max_temp_gib",
    8.0,
    "Compile but do not run a step whose working memory exceeds this (its times are NaN).",
)
_SCALING = flags.DEFINE_bool(
    "scaling",
    False,
    "Instead of --groups: every registered loss at --batch x each of --classes, with fitted "
    "exponents of time and memory in C.",
)
_BATCH = flags.DEFINE_integer("batch", 1024, "Batch size of the --scaling rows.")
_CLASSES = flags.DEFINE_list(
    "classes", ["1000", "10000", "100000"], "Class counts of the --scaling rows (two or more)."
)

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


def registered_case(
    name: str, batch: int, classes: int, *, group: str = "registered", label: str = "", **overrides
) -> Case:
    """A registered loss called through ``jaxloss.get_loss`` as a training loop calls it: its
    spec's default hyperparameters (k below the class count), updated by ``overrides``."""
    hyperparameters = jaxloss.loss_spec(name).hyperparameters()
    if "k" in hyperparameters:
        hyperparameters["k"] = min(hyperparameters["k"], classes - 1)
    loss = jaxloss.get_loss(
        name, class_counts=jnp.arange(1.0, classes + 1.0), **{**hyperparameters, **overrides}
    )
    return Case(group, label or name, batch, classes, lambda x, y, k, f=loss: f(x, y, key=k))


def registered_cases() -> list[Case]:
    """Every registered loss (``jaxloss.available_losses()``) at its spec's default hyperparameters."""
    return [
        registered_case(name, batch, classes)
        # EXACT's full Genz is O(C^2): see the exact group and --scaling for more classes.
        for batch, classes in SHAPES[:2]
        for name in jaxloss.available_losses()
    ]


# What --scaling times instead of a loss's defaults (row label -> hyperparameters): EXACT's Genz
# estimator costs O(C^2) per example over all classes, so it runs on the 128 strongest competitors;
# its quadrature runs in full.
SCALING_VARIANTS = {
    "exact": {
        "exact genz trunc=128": {"truncate_classes": 128},
        "exact quadrature": {"method": "quadrature"},
    },
}


def scaling_cases(batch: int, classes: int) -> list[Case]:
    """Every registered loss at (batch, classes), EXACT as its :data:`SCALING_VARIANTS`."""
    return [
        registered_case(name, batch, classes, group="scaling", label=label, **overrides)
        for name in jaxloss.available_losses()
        for label, overrides in SCALING_VARIANTS.get(name, {name: {}}).items()
    ]


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


_WARM_UP = 3  # untimed calls per step


def _compiled_step(fn: Callable, logits: jax.Array, labels: jax.Array):
    """A jitted forward+backward of ``mean(fn(logits, labels, key))`` and its temp bytes."""
    key = jax.random.key(0)

    def objective(x):
        return jnp.mean(fn(x, labels, key))

    compiled = jax.jit(jax.value_and_grad(objective)).lower(logits).compile()
    memory = compiled.memory_analysis()
    temp_bytes = int(getattr(memory, "temp_size_in_bytes", 0)) if memory is not None else 0
    return compiled, temp_bytes


@functools.lru_cache(maxsize=1)  # cases come shape by shape; one 1024x100000 input is 400 MB
def _cross_entropy_step(batch: int, classes: int):
    """The fixed logits and labels of a shape, and cross-entropy's compiled step on them."""
    logits = 3.0 * jax.random.normal(jax.random.key(1), (batch, classes), jnp.float32)
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, classes)
    return logits, labels, _compiled_step(cross_entropy, logits, labels)


def measure(
    fn: Callable,
    batch: int,
    classes: int,
    repeats: int,
    max_seconds: float = float("inf"),
    max_temp_bytes: float = float("inf"),
) -> tuple[float, float, int]:
    """Median ms of ``fn`` and of cross-entropy, timed call by call in turn, and fn's temp bytes.

    Interleaving makes both medians see the same machine state (frequency, other load), so their
    ratio is stable even when the absolute times drift. Timing stops after ``max_seconds`` once
    three calls of each are timed. A step that would need more than ``max_temp_bytes`` of
    working memory is compiled but not run: its times are NaN.
    """
    logits, labels, reference = _cross_entropy_step(batch, classes)
    steps = [_compiled_step(fn, logits, labels), reference]
    if steps[0][1] > max_temp_bytes:
        return math.nan, math.nan, steps[0][1]
    times = ([], [])
    began = time.perf_counter()
    for i in range(repeats + _WARM_UP):
        for (compiled, _), record in zip(steps, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(compiled(logits))
            if i >= _WARM_UP:
                record.append(time.perf_counter() - start)
        if len(times[0]) >= 3 and time.perf_counter() - began > max_seconds:
            break
    return 1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[1]), steps[0][1]


def group_cases(groups: list[str]) -> list[Case]:
    unknown = sorted(set(groups) - set(CASE_GROUPS))
    if unknown:
        raise ValueError(f"unknown groups {unknown}; choose from {sorted(CASE_GROUPS)}")
    return [case for g in groups for case in CASE_GROUPS[g]()]


def run(cases: list[Case], repeats: int, **limits) -> Iterator[dict]:
    """Each case's row, printed as it is measured (``limits``: those of :func:`measure`)."""
    for case in cases:
        ms, ce_ms, temp = measure(case.fn, case.batch, case.classes, repeats, **limits)
        row = dict(
            group=case.group,
            loss=case.name,
            batch=case.batch,
            classes=case.classes,
            ms=ms,
            ce_ms=ce_ms,
            ratio=ms / ce_ms,
            temp_bytes=temp,
        )
        print(format_row(row), flush=True)
        yield row


def format_row(row: dict) -> str:
    return (
        f"| {row['loss']:<40} | {row['batch']:>5}x{row['classes']:<6} | {row['ms']:>9.3f} | "
        f"{row['ce_ms']:>7.3f} | {row['ratio']:>7.1f}x | {row['temp_bytes'] / 2**20:>9.2f} |"
    )


# A time or memory exponent in C above this is flagged: the goal is cost linear in C.
EXPONENT_LIMIT = 1.1


def fit_exponent(classes: list[int], values: list[float]) -> float | None:
    """The a of ``values ~ classes^a``: least-squares slope on log-log over the measured (not
    NaN) values; None with fewer than two of them or a value of 0.

    Example:
      >>> round(fit_exponent([10, 100, 1000], [3.0, 30.0, math.nan]), 6)
      1.0
    """
    points = [(c, v) for c, v in zip(classes, values, strict=True) if not math.isnan(v)]
    if len(points) < 2 or min(v for _, v in points) <= 0:
        return None
    x, y = np.log(np.array(points, dtype=float)).T
    return float(np.polyfit(x, y, 1)[0])


def add_exponents(rows: list[dict]) -> list[dict]:
    """Each loss's fitted exponents in C, set on every row of that loss: of its time, of its ratio
    to cross-entropy (the growth beyond the reference's, which memory caches bend on a CPU) and of
    its temp memory. Returns one summary per loss: its rows by class count and what is flagged."""
    summaries = []
    for loss in dict.fromkeys(row["loss"] for row in rows):
        mine = sorted((row for row in rows if row["loss"] == loss), key=lambda row: row["classes"])
        classes = [row["classes"] for row in mine]
        exponents = {
            name: fit_exponent(classes, [row[field] for row in mine])
            for name, field in (
                ("time_exponent", "ms"),
                ("ratio_exponent", "ratio"),
                ("memory_exponent", "temp_bytes"),
            )
        }
        for row in mine:
            row.update(exponents)
        limits = (
            ("time", "time_exponent", EXPONENT_LIMIT),
            ("vs CE", "ratio_exponent", EXPONENT_LIMIT - 1),
            ("memory", "memory_exponent", EXPONENT_LIMIT),
        )
        over = [
            what
            for what, name, limit in limits
            if exponents[name] is not None and exponents[name] > limit
        ]
        summaries.append(dict(loss=loss, rows=mine, over=over))
    return summaries


def _exponent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_scaling(summaries: list[dict]) -> str:
    """The scaling table: ratio to cross-entropy and temp MiB per class count, the exponents."""
    classes = [row["classes"] for row in summaries[0]["rows"]]
    batch = summaries[0]["rows"][0]["batch"]
    head = (
        ["loss"]
        + [f"vs CE C={c}" for c in classes]
        + [f"temp MiB C={c}" for c in classes]
        + ["a (time)", "a - a(CE)", "b (memory)", "flagged"]
    )
    ce_ms = [
        statistics.median(s["rows"][i]["ce_ms"] for s in summaries) for i in range(len(classes))
    ]
    body = [
        ["optax cross-entropy (ms)"]
        + [f"{ms:.3f}" for ms in ce_ms]
        + ["-"] * len(classes)
        + [_exponent(fit_exponent(classes, ce_ms)), "-", "-", ""]
    ]
    for summary in summaries:
        rows = summary["rows"]
        body.append(
            [summary["loss"]]
            + [f"{row['ratio']:.2f}x" for row in rows]
            + [f"{row['temp_bytes'] / 2**20:.2f}" for row in rows]
            + [_exponent(rows[0][name]) for name in ("time_exponent", "ratio_exponent")]
            + [_exponent(rows[0]["memory_exponent"]), ", ".join(summary["over"])]
        )
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = [
        f"Scaling at batch {batch}: time ~ C^a, ratio to cross-entropy ~ C^(a - a(CE)), temp "
        f"memory ~ C^b (least squares on log-log). Flagged: a or b > {EXPONENT_LIMIT}, "
        f"a - a(CE) > {EXPONENT_LIMIT - 1:.1f}."
    ]
    for i, line in enumerate([head, *body]):
        cells = [f"{line[0]:<{widths[0]}}"]
        cells += [f"{cell:>{w}}" for cell, w in zip(line[1:], widths[1:], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _scaling_classes() -> list[int]:
    try:
        classes = sorted(int(c) for c in _CLASSES.value)
    except ValueError as error:
        raise app.UsageError(f"--classes takes integers: {error}") from None
    if len(set(classes)) < 2 or classes[0] < 2:
        raise app.UsageError(f"--classes needs two or more distinct counts >= 2, got {classes}.")
    return classes


def main(argv):
    del argv
    if _SCALING.value:
        cases = [c for n in _scaling_classes() for c in scaling_cases(_BATCH.value, n)]
    else:
        cases = group_cases(_GROUPS.value or list(CASE_GROUPS))
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {platform.processor()}")
    print(
        f"| {'loss':<40} | {'shape':<12} | {'ms (f+b)':>9} | {'CE ms':>7} | {'vs CE':>8} | "
        f"{'temp MiB':>9} |"
    )
    print(f"|{'-' * 42}|{'-' * 14}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 11}|")
    rows = []
    limits = dict(max_seconds=_MAX_SECONDS.value, max_temp_bytes=_MAX_TEMP_GIB.value * 2**30)
    for row in run(cases, _REPEATS.value, **limits):
        rows.append(row)
        _write_json(rows)  # a long run killed midway keeps its rows
    if _SCALING.value:
        print("\n" + format_scaling(add_exponents(rows)))
        _write_json(rows)


def _write_json(rows: list[dict]) -> None:
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    cli.run(main, epilogue=f"Groups: {', '.join(CASE_GROUPS)}.")
