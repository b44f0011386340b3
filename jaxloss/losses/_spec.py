"""What a loss is, declared once: the record that the registry, configs, tests and benchmarks read."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["LossSpec", "Range"]

# Keyword arguments of the library's losses that are plumbing, not hyperparameters.
PLUMBING = frozenset({"key", "axis", "axis_name", "class_axis_name", "where", "noise", "uniforms"})
# Per-class statistics of the training data: passed by the training loop, never tuned.
CLASS_COUNTS = "class_counts"


@dataclasses.dataclass(frozen=True)
class Range:
    """A continuous hyperparameter's sensible values: [low, high], on a log or a linear scale."""

    low: float
    high: float
    log: bool = True

    def __post_init__(self):
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"Bad range [{self.low}, {self.high}] (log={self.log}).")

    def grid(self, n: int) -> np.ndarray:
        """``n`` evenly spaced values (geometrically for a log range), both ends included."""
        if n == 1:
            return np.asarray(
                [np.sqrt(self.low * self.high) if self.log else 0.5 * (self.low + self.high)]
            )
        if self.log:
            return np.geomspace(self.low, self.high, n)
        return np.linspace(self.low, self.high, n)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One registered loss: its function and everything a training loop or a test must know of it.

    Attributes:
      name: the registry name (``get_loss(name)``).
      fn: the loss, ``fn(logits, labels, *, hyperparameters..., axis=-1, where=None)``.
      defaults: the papers' training defaults that differ from (or are missing in) ``fn``'s
        signature; :meth:`hyperparameters` merges them over the signature's defaults.
      ranges: every continuous hyperparameter (those that may be traced arrays, e.g. vmapped over
        a population) with its tuning range.
      tuned: the hyperparameters an equal-budget tuning searches (besides the learning rate).
      logit_scale: for losses made for cosine scores, the hyperparameter that scales them: the
        model's head then outputs ``scale * cosine`` (the logits the loss uses, which evaluation
        sees too) and :func:`jaxloss.get_loss` divides by it before calling ``fn``. None: plain
        logits from a linear head.
      schedule: hyperparameters that change during training, as ``schedule(num_epochs=,
        steps_per_epoch=, **schedule_defaults) -> (step -> {hyperparameter: value})``; the train
        step evaluates it at its step counter.
      schedule_defaults: the schedule's own parameters (the papers' values).
      optimizer: optimizer settings that are part of the loss's recipe (config field -> value).
      reproducible: ``reproducible(shape, rng, hyperparameters) -> kwargs`` that make a
        stochastic loss deterministic and identical across devices (injected noise, or a
        deterministic method), for tests that compare runs; None for deterministic losses.
      page: the API reference page that documents ``fn`` (``docs/api/<page>.rst``, its family's),
        which lists its losses from these specs; None leaves ``fn`` to the registry's page.
    """

    name: str
    fn: Callable[..., jax.Array]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    ranges: Mapping[str, Range] = dataclasses.field(default_factory=dict)
    tuned: tuple[str, ...] = ()
    logit_scale: str | None = None
    schedule: Callable[..., Callable[[Any], Mapping[str, Any]]] | None = None
    schedule_defaults: Mapping[str, float] = dataclasses.field(default_factory=dict)
    optimizer: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reproducible: Callable[..., dict[str, Any]] | None = None
    page: str | None = None

    def __post_init__(self):
        accepted = self.signature_defaults()
        for names, what in (
            (self.defaults, "defaults"),
            (self.ranges, "ranges"),
            (self.tuned, "tuned"),
        ):
            unknown = set(names) - set(accepted)
            if unknown:
                raise ValueError(f"{self.name}: {what} names {sorted(unknown)}, not in fn.")
        if not set(self.tuned) <= set(self.ranges):
            raise ValueError(f"{self.name}: every tuned hyperparameter needs a range.")
        if self.logit_scale is not None and self.logit_scale not in accepted:
            raise ValueError(f"{self.name}: logit_scale {self.logit_scale!r} is not in fn.")

    def signature_defaults(self) -> dict[str, Any]:
        """``fn``'s keyword hyperparameters and their defaults (``inspect.Parameter.empty`` if
        required), plumbing (key, axis, where, injected noise) and class counts excluded."""
        return {
            p.name: p.default
            for p in inspect.signature(self.fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
            and p.name not in PLUMBING
            and p.name != CLASS_COUNTS
        }

    def hyperparameters(self) -> dict[str, Any]:
        """The papers' defaults: the signature's defaults, then :attr:`defaults` over them.

        Hyperparameters whose default is None are left out (the loss's own default applies).
        """
        merged = {**self.signature_defaults(), **self.defaults}
        return {
            k: v for k, v in merged.items() if v is not None and v is not inspect.Parameter.empty
        }

    @property
    def stochastic(self) -> bool:
        """Whether ``fn`` draws noise from a ``key`` (read from its signature)."""
        return "key" in inspect.signature(self.fn).parameters

    @property
    def needs_class_counts(self) -> bool:
        """Whether ``fn`` takes the training class counts (read from its signature)."""
        return CLASS_COUNTS in inspect.signature(self.fn).parameters

    @property
    def reverse_mode_only(self) -> bool:
        """Whether ``fn``'s gradient is a custom VJP (no forward-mode differentiation)."""
        return bool(getattr(self.fn, "reverse_mode_only", False))

    def scale(self, hyperparameters: Mapping[str, Any]) -> Any:
        """The factor a cosine head puts on its scores for these hyperparameters (1 for logits)."""
        if self.logit_scale is None:
            return 1.0
        return hyperparameters.get(self.logit_scale, self.signature_defaults()[self.logit_scale])

    @property
    def head(self) -> str:
        """The classifier head the loss is designed for: ``"cosine"`` or ``"linear"``."""
        return "linear" if self.logit_scale is None else "cosine"
