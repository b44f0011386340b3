"""Noised top-k losses side by side with the reference PyTorch package ``pytopk`` on the same CPU.

Run:  pip install "jaxloss[benchmark]";  python experiments/benchmark_pytopk.py [--repeats=20]

Each row times forward + backward of the batch-mean balanced loss (k=5, ε=1): ``pytopk.BalNoisedTopK``
with ``loss.backward()`` against ``jax.jit(jax.value_and_grad(...))`` of
``jaxloss.balanced_noised_topk_loss``, interleaved call by call so both see the same machine load.
Medians over ``--repeats`` calls after warm-up.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import torch
from absl import app, flags
from pytopk import BalNoisedTopK

import jaxloss

_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per row (median reported).")
ROWS = ((256, 100, 5, 10), (256, 1000, 5, 10), (256, 1000, 5, 100))


def compare(batch: int, classes: int, k: int, samples: int, repeats: int) -> tuple[float, float]:
    """Median ms of (pytopk, jaxloss) forward+backward on the same scores."""
    scores = torch.randn(batch, classes) * 3
    labels = torch.randint(0, classes, (batch,))
    criterion = BalNoisedTopK(k=k, epsilon=1.0, n_sample=samples)
    x, y = jnp.asarray(scores.numpy()), jnp.asarray(labels.numpy())

    def torch_step():
        logits = scores.clone().requires_grad_(True)
        criterion(logits, labels).backward()
        return logits.grad

    def objective(logits, key):
        loss = jaxloss.balanced_noised_topk_loss(
            logits, y, k=k, epsilon=1.0, sample_size=samples, key=key
        )
        return loss.mean()

    step = jax.jit(jax.value_and_grad(objective))
    key = jax.random.key(0)
    for _ in range(3):
        torch_step()
        jax.block_until_ready(step(x, key))
    torch_times, jax_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        torch_step()
        torch_times.append(time.perf_counter() - start)
        key = jax.random.fold_in(key, 1)
        start = time.perf_counter()
        jax.block_until_ready(step(x, key))
        jax_times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(torch_times), 1e3 * statistics.median(jax_times)


def main(argv):
    del argv
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print("| batch x classes | k | sample_size | pytopk ms | jaxloss ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for batch, classes, k, samples in ROWS:
        theirs, ours = compare(batch, classes, k, samples, _REPEATS.value)
        print(
            f"| {batch}x{classes} | {k} | {samples} | {theirs:.1f} | {ours:.1f} | "
            f"{theirs / ours:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
