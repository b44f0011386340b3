"""Shared test machinery: float64 oracles, finite differences, multi-device subprocesses.

Every loss family's tests use these, so that "compared against a float64 reference" and "gradients
checked by finite differences" mean the same thing everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import test_util

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_logits(seed: int, shape: tuple[int, ...], *, scale: float = 3.0, dtype=np.float64):
    """Reproducible Gaussian logits of a given scale."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def random_labels(seed: int, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    return np.random.default_rng(seed + 10_000).integers(0, num_classes, size=shape)


def assert_matches_oracle(
    fn: Callable,
    oracle: Callable,
    *args,
    atol: float = 1e-12,
    rtol: float = 1e-10,
    **kwargs,
) -> None:
    """Runs ``fn`` in float64 (x64 enabled) and compares it with a float64 NumPy ``oracle``.

    Array arguments are passed to both as float64 / int64 NumPy arrays; keyword arguments are passed
    unchanged.
    """
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(lambda *a: fn(*a, **kwargs))(*args))
        assert got.dtype == np.float64, f"expected a float64 result under x64, got {got.dtype}"
    want = np.asarray(oracle(*args, **kwargs), dtype=np.float64)
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


def check_grads_f64(
    fn: Callable,
    args: tuple,
    *,
    order: int = 1,
    modes: tuple[str, ...] = ("rev",),
    eps: float = 1e-6,
    atol: float = 1e-7,
    rtol: float = 1e-7,
) -> None:
    """``jax.test_util.check_grads`` in float64, the only precision where it is meaningful."""
    with jax.enable_x64(True):
        args64 = tuple(jnp.asarray(a, dtype=jnp.float64) for a in args)
        test_util.check_grads(fn, args64, order=order, modes=modes, eps=eps, atol=atol, rtol=rtol)


def assert_finite_value_and_grad(fn: Callable, logits, *args, **kwargs) -> None:
    """Value and gradient of ``sum(fn(logits, ...))`` are finite."""
    value, grad = jax.value_and_grad(lambda x: jnp.sum(fn(x, *args, **kwargs)))(logits)
    chex.assert_tree_all_finite((value, grad))


def run_on_devices(code: str, *, num_devices: int = 4, timeout: float = 300) -> str:
    """Runs Python ``code`` in a subprocess that sees ``num_devices`` host CPU devices.

    The device count of a JAX process is fixed when it starts, so multi-device behaviour is tested
    in a fresh interpreter. Returns its stdout; fails the test with its stderr if it exits non-zero.
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={num_devices}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO_ROOT,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"subprocess failed with exit code {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-5000:]}"
        )
    return result.stdout


def spec_call(spec, *, num_classes: int, seed: int = 0, k: int = 2):
    """``fn(logits, labels, **hyperparameters)`` for a registered loss, ready for small tests.

    The spec's defaults with top-k losses at ``k`` (small class counts), class counts when the loss
    needs them, and a fixed key for stochastic losses (same key, same noise: comparable calls).
    """
    hyperparameters = spec.hyperparameters()
    if "k" in hyperparameters:
        hyperparameters["k"] = k
    if spec.needs_class_counts:
        hyperparameters["class_counts"] = np.arange(1.0, num_classes + 1) * 10
    if spec.stochastic:
        hyperparameters["key"] = jax.random.key(seed)

    def call(logits, labels, **overrides):
        return spec.fn(logits, labels, **{**hyperparameters, **overrides})

    return call


def run_script(name: str, *args: str, cwd: str = REPO_ROOT, timeout: float = 600):
    """Runs ``experiments/<name>`` with ``args`` on the CPU; returns the CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "experiments", name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
