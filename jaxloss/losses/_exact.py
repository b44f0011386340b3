"""EXACT: the expected error of the classifier whose logits get Gaussian noise."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss import _autodiff, _classes, _validation, optim
from jaxloss.losses import _docstrings
from jaxloss.losses._spec import LossSpec, Range
from jaxloss.ops._orthant import check_key, orthant_core

__all__ = ["exact_loss"]

# Added to the variance of the normalization, so that constant logits normalize to 0 (and every
# class ties) instead of 0/0.
_NORMALIZE_EPS = 1e-12
# The most uniforms one call may draw (16 GiB in float32), as for the noised top-k's draws.
_MAX_DRAWS = 2**32


def _normalize(z, counted, axis_name, classes):
    """(z - mean) / std with the mean and unbiased std of the ``counted`` elements (all examples).

    Uncounted finite elements (masked classes) are standardized with the same statistics;
    non-finite ones come back as 0 and must be restored by the caller.
    """

    def total(x):
        # Over the local examples, then the classes (all their shards), then the mapped axis.
        x = classes.sum(jnp.sum(x, axis=tuple(range(x.ndim - 1))))
        return x if axis_name is None else lax.psum(x, axis_name)

    safe = jnp.where(jnp.isfinite(z), z, 0.0)
    weights = counted.astype(z.dtype)
    count, sum_ = total(weights), total(weights * safe)
    # An all-masked batch has no statistics; max(count, 1) keeps it (and its zero gradient) finite.
    centered = safe - sum_ / jnp.maximum(count, 1.0)
    squares = total(weights * centered * centered)
    variance = squares / jnp.maximum(count - 1.0, 1.0)
    return centered * lax.rsqrt(variance + _NORMALIZE_EPS)


def _check_draws(k: int, sample_size: Any, batch_shape: tuple[int, ...]) -> None:
    """Checks ``sample_size``, and refuses a Genz estimate whose uniforms (k x N per example, for
    k > 1 entries) would not fit one call."""
    sample_size = _validation.check_integer("sample_size", sample_size, lower=1)
    draws = k * sample_size * math.prod(batch_shape)
    if k > 1 and draws >= _MAX_DRAWS:
        raise ValueError(
            f"sample_size={sample_size}: exact_loss would draw {draws} uniforms ({k} competitors "
            f"x {sample_size} samples x {math.prod(batch_shape)} examples); at most 2**32 - 1 are "
            "supported per call. Lower sample_size, pass truncate_classes or "
            "method='quadrature', or split the batch."
        )


@_autodiff.reverse_mode_only
@_docstrings.shared_args
def exact_loss(
    logits: Any,
    labels: Any,
    *,
    key: jax.Array | None = None,
    uniforms: Any = None,
    temperature: Any = 1.0,
    margin: Any = None,
    sample_size: int = 16,
    normalize_logits: bool | None = None,
    truncate_classes: int | None = None,
    axis: int | tuple[int, ...] = -1,
    where: Any = None,
    axis_name: str | None = None,
    method: str = "genz",
    class_axis_name: str | None = None,
) -> jax.Array:
    r"""EXACT loss: one minus the accuracy of the logits under Gaussian noise of std ``temperature``.

    .. math::

      \ell(z, y) = 1 - \Pr\big(\arg\max_k (z_k + T \varepsilon_k) = y\big)
                 = 1 - \Pr\big(\mu + w > 0\big),
      \quad \mu_k = \frac{\min(z_y - z_k,\ m)}{T}\ (k \ne y),
      \quad w \sim \mathcal{N}(0, I + \mathbf{1}\mathbf{1}^\top),

    computed by :func:`jaxloss.ops.gaussian_orthant_probability` (Genz's estimator with a
    stochastic, unbiased gradient, or a deterministic quadrature). Preprocessing follows the
    reference implementation:

    1. with ``normalize_logits`` (default: on when a temperature is given), the logits are
       standardized by the mean and unbiased std of **all** their elements (every example and
       class): :math:`z \leftarrow (z - \bar z) / \sqrt{s^2 + 10^{-12}}`. The :math:`10^{-12}`
       (a std floor of :math:`10^{-6}`, as in the reference's vision code) keeps constant logits
       finite: they give :math:`1 - 1/C` and a large but finite gradient. This couples the
       examples: under ``jit`` the statistics are those of the global (possibly sharded) batch;
       inside ``shard_map``/``pmap`` they are per device unless ``axis_name`` names the mapped
       axis, which makes them global (the reference uses per-device statistics); with
       ``class_axis_name`` they always cover every class of the split rows;
    2. the differences :math:`z_y - z_k` are clipped from above at ``margin`` (in normalized units;
       the gradient still passes at equality) and divided by the temperature, which may be a
       traced, differentiable scalar.

    **Defaults.** The defaults are the paper's recipe at the end of its schedule: normalized logits
    and ``temperature=1.0`` (the vision runs decay the noise variance to 1) with
    ``sample_size=16``. The normalization keeps the differences :math:`\mu` of order one whatever
    the scale the network gives its logits, so no row saturates and every example gets a gradient;
    unnormalized logits with unit noise saturate once the logits grow past a few units (a badly
    misclassified row then has loss exactly 1 and gradient exactly 0, and training stalls). To
    anneal, pass a scheduled temperature (:func:`jaxloss.optim.temperature_schedule`,
    :func:`jaxloss.optim.variance_schedule`). ``temperature=None`` gives the reference's behaviour
    without a temperature: noise of std 1 in raw logit units and no normalization.

    **Masks and non-finite logits.** Classes excluded by ``where``, and classes whose logit is
    :math:`-\infty`, drop out of the competition and of the normalization statistics (value and
    gradient as if the class did not exist; gradient 0 there). A masked label still enters with
    its logit; a row with no competitor left has loss 0 and gradient 0. A NaN logit makes its row
    NaN; NaN and :math:`\pm\infty` are left out of the statistics, and a row holding a NaN takes
    no part in them in the backward pass either, so the other rows' values and logit gradients
    stay finite (a shared, differentiated temperature gets a NaN gradient). A :math:`+\infty`
    logit gives the limit: loss 0 at the label, 1 at a competitor.

    The estimate is random: each call draws new uniforms from ``key`` (or takes injected
    ``uniforms``). With two classes (or ``truncate_classes=1``) and with ``method="quadrature"``
    the loss is deterministic and ``key`` may be None; otherwise ``key=None`` without ``uniforms``
    raises a ValueError. As in the reference, in float32 badly misclassified rows (some
    :math:`\mu_k \lesssim -8`) give exactly loss 1 and zero gradient with ``method="genz"``.
    Cost is :math:`O(B \cdot N \cdot C^2)` with the gradient (:math:`O(B \cdot N \cdot C)`
    for the value alone): use ``truncate_classes`` (or the quadrature, :math:`O(B \cdot C)`)
    for many classes. The gradient is a custom VJP: use reverse mode;
    forward mode (``jax.jvp``, ``jax.jacfwd``) raises a TypeError.

    **Classes split over devices** (``class_axis_name``, inside ``shard_map``): the values and
    gradients are the single-device ones for the same rows and draws. The quadrature and the
    statistics combine per-example sums; truncation selects the strongest competitors from each
    shard's ``truncate_classes`` candidates, then runs on them on every device. Genz's estimator
    without truncation is sequential over all the sorted competitors: it gathers the whole rows
    onto every device (use ``truncate_classes`` with many classes).

    Args:
      logits: float array of shape ``(..., C)`` (classes along ``axis``), ``C >= 2``.
      labels: integer array of shape ``(...)``.
      key: PRNG key of the Monte-Carlo estimate; required unless the loss is deterministic (see
        above) or ``uniforms`` are given. With ``axis_name``, each shard draws from
        ``jax.random.fold_in(key, jax.lax.axis_index(axis_name))`` (for several names, the
        row-major index over them in the given order), so the shards' estimates are independent
        and a shard's loss is that of a single-device call with this folded key on its examples.
        Without ``axis_name`` every shard of a ``shard_map``/``pmap`` draws the same noise. The
        key is not folded over ``class_axis_name``: the class shards of a row share its draw.
      uniforms: optional uniforms in [0, 1) of shape ``(k, N, ...)`` that replace the draw (and
        the key), with ``k = C - 1`` (or ``min(truncate_classes, C - 1)``; C counts the classes
        of whole rows) and the labels' shape
        last, so that they shard with the batch; row i drives the i-th strongest competitor (see
        :func:`jaxloss.ops.gaussian_orthant_probability`).
      temperature: noise std :math:`T > 0` (scalar; float or traced array, finite and at least
        the smallest normal number of the compute dtype, about 1.2e-38 in float32). The gradient
        never forms :math:`T^2`, so it stays finite for tiny temperatures. None means noise of
        std 1 in raw logit units and no normalization by default (the reference without a
        temperature).
      margin: optional upper clip :math:`m` of the differences :math:`z_y - z_k` (float or traced
        array); requires a temperature. ``inf`` is no clip, as None.
      sample_size: number of samples N of the Genz estimator; the uniforms of one call
        (``k x N`` per example) must number fewer than 2**32.
      normalize_logits: standardize the logits over the whole batch first; None follows the
        reference (on iff a temperature is given).
      truncate_classes: if given, only the ``truncate_classes`` strongest competitors of each
        example are integrated: an upper bound on accuracy (lower bound on the loss), much cheaper
        for large C.
      axis: (shared)
      where: (shared) False also removes a class from the normalization statistics.
      axis_name: mapped axis name(s) over which the normalization statistics are summed
        (``shard_map``/``pmap``), and whose index is folded into ``key``; None uses the local
        batch and the key as given. These are the axes the examples are split over (data
        parallelism); the axis the classes are split over is ``class_axis_name``, never named
        here.
      method: ``"genz"`` (the reference's estimator) or ``"quadrature"`` (deterministic).
      class_axis_name: (shared)

    Returns:
      The per-example loss in [0, 1], shape ``labels.shape``, in the logits' dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxloss
      >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.5, 0.0]])
      >>> labels = jnp.array([0, 2])
      >>> loss = jaxloss.exact_loss(logits, labels, temperature=None, method="quadrature")
      >>> print(f"{loss[0]:.4f} {loss[1]:.4f}")
      0.0885 0.7413
      >>> loss = jaxloss.exact_loss(
      ...     logits, labels, key=jax.random.key(0), temperature=0.5, margin=1.0, sample_size=4096
      ... )
      >>> print(f"{loss[0]:.2f} {loss[1]:.2f}")
      0.13 0.82

    References:
      Karpukhin, Dereka and Kolesnikov, "EXACT: How to Train Your Accuracy", Pattern Recognition
      Letters, 2024. https://arxiv.org/abs/2205.09615
    """
    prepared = _validation.prepare(
        logits, labels, axis=axis, where=where, min_classes=2, class_axis_name=class_axis_name
    )
    z, labels, where, classes = prepared.logits, prepared.labels, prepared.where, prepared.classes
    num_classes = prepared.num_classes
    if class_axis_name is not None and class_axis_name in (
        (axis_name,) if isinstance(axis_name, str) else tuple(axis_name or ())
    ):
        raise ValueError(
            f"axis_name={axis_name!r} names the class axis {class_axis_name!r}: axis_name is the "
            "mapped batch axis (statistics and draws), class_axis_name alone names the class split."
        )
    if margin is not None and temperature is None:
        raise ValueError(
            f"margin={margin} requires a temperature: the margin is in normalized-logit units, "
            "which exist only when a temperature is given."
        )
    _validation.check_in_range(
        "temperature", temperature, lower=float(jnp.finfo(z.dtype).tiny), finite=True
    )
    _validation.check_in_range("margin", margin)
    k = check_key(
        key,
        dim=num_classes - 1,
        truncate_classes=truncate_classes,
        method=method,
        uniforms=uniforms,
    )
    if method == "genz" and uniforms is None:
        _check_draws(k, sample_size, labels.shape)
    if key is not None and axis_name is not None:
        key = jax.random.fold_in(key, lax.axis_index(axis_name))

    # -inf is a masked class; NaN and +inf are not, and must reach the result. The label is an
    # excluded competitor (mu = +inf drops out), so that the row keeps its classes (and split
    # rows their split).
    counted = jnp.isfinite(z)
    competes = (z != -jnp.inf) & ~classes.is_label(labels, z.shape[-1])
    if where is not None:
        counted &= where
        competes &= where
    if normalize_logits is None:
        normalize_logits = temperature is not None
    if normalize_logits:
        nan = jnp.isnan(z)
        poisoned = jnp.isnan(classes.label_value(z, labels)) | classes.max(
            nan if where is None else nan & where
        )
        # Non-finite entries keep their value; a NaN row bypasses the statistics, so its NaN
        # gradient does not reach the other rows through them.
        normalized = _normalize(z, counted, axis_name, classes)
        z = jnp.where(jnp.isfinite(z) & ~poisoned[..., None], normalized, z)

    mu = classes.label_value(z, labels)[..., None] - z
    if margin is not None:
        # An upper clip whose gradient still passes at equality, like torch.clip.
        mu = jnp.where(mu > margin, jnp.asarray(margin, mu.dtype), mu)
    if temperature is not None:
        # 1/T as exp(-log T): its gradient is -1/T times that of log T, so no T^2 underflows to 0
        # (T < 1e-19 in float32) and the zero gradient of saturated entries does not become NaN.
        # The double where keeps infinite differences out of the product (0 * inf in backward).
        inverse = jnp.exp(-jnp.log(jnp.asarray(temperature, mu.dtype)))
        finite = jnp.isfinite(mu)
        mu = jnp.where(finite, jnp.where(finite, mu, 0.0) * inverse, mu)
    # An excluded competitor is one the label always beats.
    mu = jnp.where(competes, mu, jnp.inf)
    truncated = k < num_classes - 1
    whole_rows = method == "genz" and not truncated
    if whole_rows:
        # Genz's estimator runs over every competitor: the C - 1 columns of the whole row other
        # than the label's, in increasing class order (the uniforms' rows follow it).
        others = jnp.arange(num_classes - 1)
        others = others + (others >= labels[..., None])
        mu = jnp.take_along_axis(classes.whole(mu), others, axis=-1)
    # The op's unchecked core: the logits were prepared and its arguments checked above.
    probability = orthant_core(
        mu,
        classes if not whole_rows else _classes.WHOLE,
        key=key,
        sample_size=sample_size,
        uniforms=uniforms,
        # The label's +inf sorts last: the k < C - 1 smallest entries are competitors (or ties
        # at +inf, which drop out alike).
        truncate_classes=k if truncated else None,
        method=method,
    )
    return prepared.finish(1.0 - probability)


def _temperature_schedule(*, num_epochs, steps_per_epoch, initial_variance, min_variance):
    """EXACT's vision recipe: the noise variance decays geometrically per epoch; T = sqrt(v)."""
    variance = optim.variance_schedule(
        num_epochs, steps_per_epoch, min_variance=min_variance, init_variance=initial_variance
    )
    return lambda step: {"temperature": jnp.sqrt(variance(step))}


def _quadrature(shape, rng, hyperparameters):
    """The deterministic method: the same values on every device and in every run."""
    del shape, rng, hyperparameters
    return {"method": "quadrature"}


SPECS = (
    LossSpec(
        "exact",
        exact_loss,
        ranges={"temperature": Range(0.1, 10.0), "margin": Range(0.1, 10.0)},
        tuned=("margin",),
        schedule=_temperature_schedule,
        schedule_defaults={"initial_variance": 100.0, "min_variance": 1.0},
        optimizer={"gradient_normalizer": True},
        reproducible=_quadrature,
        page="exact",
    ),
)
