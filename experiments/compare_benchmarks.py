r"""Compare two runs of ``benchmark_losses.py``: a regression guard that does not time anything.

Run the benchmark before a change and after it, then compare:

  python experiments/benchmark_losses.py --groups=closed_form --repeats=300 --json=before.json
  # ... change the code ...
  python experiments/benchmark_losses.py --groups=closed_form --repeats=300 --json=after.json
  python experiments/compare_benchmarks.py before.json after.json [--threshold=0.2]

Rows are matched by (group, loss, batch, classes). The comparison is on the ratio to
cross-entropy (timed in alternating calls within each run), not on milliseconds, so that a
machine that is busier or slower in one run does not read as a regression. A row is flagged when
its ratio grew by more than ``--threshold`` (0.2: more than 20 % slower relative to
cross-entropy); the exit status is 1 when any row is flagged, 0 otherwise. Rows present in only one
file are listed but do not fail the comparison.
"""

from __future__ import annotations

import argparse
import json
import sys

KEY_FIELDS = ("group", "loss", "batch", "classes")


def load_rows(path: str) -> dict[tuple, dict]:
    """The rows of a benchmark JSON file, by (group, loss, batch, classes).

    Args:
      path: a file written by ``benchmark_losses.py --json=...``.

    Returns:
      Each row keyed by its (group, loss, batch, classes).

    Raises:
      ValueError: if two rows share a key (the comparison would be ambiguous).
    """
    with open(path) as f:
        rows = json.load(f)
    by_key = {}
    for row in rows:
        key = tuple(row[field] for field in KEY_FIELDS)
        if key in by_key:
            raise ValueError(f"{path}: two rows for {key}")
        by_key[key] = row
    return by_key


def compare(before: dict[tuple, dict], after: dict[tuple, dict], threshold: float) -> dict:
    """Relative change of each shared row's ratio to cross-entropy, and the rows to report.

    Args:
      before: rows of the earlier run, as :func:`load_rows` returns them.
      after: rows of the later run.
      threshold: the relative growth of the ratio beyond which a row is flagged (0.2 = 20 %).

    Returns:
      A dict with ``rows`` (``(key, before_ratio, after_ratio, change)`` for each shared key, in
      the earlier run's order), ``flagged`` (the keys whose change exceeds ``threshold``),
      ``only_before`` and ``only_after`` (keys present in one run only).

    Example:
      >>> row = lambda ratio: {("closed_form", "focal", 256, 10): {"ratio": ratio}}
      >>> result = compare(row(1.0), row(1.25), threshold=0.2)
      >>> result["rows"][0][3], result["flagged"]
      (0.25, [('closed_form', 'focal', 256, 10)])
    """
    rows = []
    for key, row in before.items():
        if key in after:
            old, new = row["ratio"], after[key]["ratio"]
            rows.append((key, old, new, new / old - 1.0))
    return dict(
        rows=rows,
        flagged=[key for key, _, _, change in rows if change > threshold],
        only_before=[key for key in before if key not in after],
        only_after=[key for key in after if key not in before],
    )


def _name(key: tuple) -> str:
    group, loss, batch, classes = key
    return f"{group}/{loss} {batch}x{classes}"


def report(result: dict, threshold: float) -> str:
    """The comparison as a markdown table, the flagged rows, and the rows of one run only."""
    lines = [
        f"| {'case':<55} | {'before':>7} | {'after':>7} | {'change':>8} |",
        f"|{'-' * 57}|{'-' * 9}|{'-' * 9}|{'-' * 10}|",
    ]
    flagged = set(result["flagged"])
    for key, old, new, change in result["rows"]:
        mark = "  SLOWER" if key in flagged else ""
        lines.append(
            f"| {_name(key):<55} | {old:>6.2f}x | {new:>6.2f}x | {100 * change:>+7.1f}% |{mark}"
        )
    for title, keys in (
        (f"Ratio to cross-entropy more than {100 * threshold:g} % worse", result["flagged"]),
        ("Only in the first file", result["only_before"]),
        ("Only in the second file", result["only_after"]),
    ):
        if keys:
            lines += ["", f"{title}:"] + [f"  {_name(key)}" for key in keys]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Compares the two files named in ``argv``; returns the exit status (1 if a row is flagged)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="JSON rows of the run before the change.")
    parser.add_argument("after", help="JSON rows of the run after the change.")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.2,
        help="Flag a row whose ratio to cross-entropy grew by more than this fraction.",
    )
    args = parser.parse_args(argv)
    result = compare(load_rows(args.before), load_rows(args.after), args.threshold)
    print(report(result, args.threshold))
    return 1 if result["flagged"] else 0


if __name__ == "__main__":
    sys.exit(main())
