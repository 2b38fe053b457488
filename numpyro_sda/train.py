r"""Denoising score matching for local scores, in compiled chunks of optimiser steps.

The network :math:`\varepsilon_\phi` is trained on random windows :math:`w` of :math:`2k + 1`
consecutive states of the training trajectories with the denoising score-matching loss
(Vincent, 2011; Ho et al., 2020; Rozet & Louppe, 2023, arXiv:2306.10574, Eq. 5)

.. math:: \mathcal{L}(\phi) = \mathbb{E}_{w, t \sim U(0, 1), \varepsilon \sim N(0, I)}
          \big\| \varepsilon_\phi(\mu(t) w + \sigma(t) \varepsilon, t) - \varepsilon \big\|^2

(mean over elements), optimised with AdamW, a warm-up-free linear or cosine decay of the learning
rate to zero, and gradient clipping by global norm. ``chunk`` steps at a time run inside one
:func:`jax.jit`-compiled :func:`jax.lax.scan` (batch sampling included), so Python only runs
between chunks (progress bar, validation loss, NaN check, checkpoints).

Step :math:`n` uses the key ``fold_in(key(seed), n)``, so a run resumed from a checkpoint
repeats an uninterrupted run with the same seed exactly.
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import Array
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from numpyro_sda.checkpoint import check_writable, load_checkpoint, save_score
from numpyro_sda.data import sample_windows
from numpyro_sda.parallel import (
    DRAWS,
    block_interruptibly,
    check_partitionable,
    draws_mesh,
    draws_sharding,
    num_shards,
)
from numpyro_sda.score import LocalScore

__all__ = [
    "train_score",
    "TrainConfig",
    "TrainResult",
    "dsm_loss",
    "make_loss_and_grad",
    "make_train_step",
    "run_chunks",
    "make_optimizer",
    "make_optimizer_schedule",
    "make_chunk_fn",
    "as_trajectories",
]

SCHEDULES = ("linear", "cosine")


@dataclass
class TrainResult:
    """What :func:`train_score` returns; unpacks as ``score, history = train_score(...)``.

    Attributes:
        score: the trained :class:`~numpyro_sda.score.LocalScore` (the same object that was
            passed in, updated in place; the EMA weights when ``ema`` is set).
        history: ``{"step", "train_loss", "valid_loss", "lr", "elapsed"}`` numpy arrays, one
            entry per validation (``train_loss`` is the mean loss of the steps since the
            previous entry; ``elapsed`` is wall time in seconds, counted over every run a
            resumed run continues).
        stop_reason: ``"completed"``, ``"nan"`` (a non-finite loss; the last finite state is
            kept), ``"time_limit"`` or ``"callback"`` (Ctrl-C raises ``KeyboardInterrupt``
            after saving; see :func:`train_score`).
        step: the number of optimiser steps reached.
        elapsed: training wall time in seconds (compilation included), summed over the runs
            of a resumed training (the checkpoint records it).
    """

    score: LocalScore
    history: dict[str, np.ndarray]
    stop_reason: str = "completed"
    step: int = 0
    elapsed: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.score, self.history))


def as_trajectories(data: Any, name: str, score: LocalScore) -> jnp.ndarray:
    """Check and convert training/validation data to a float32 array ``(N, T, *state_shape)``.

    Accepts arrays (numpy/JAX), :class:`numpyro_sda.data.TrajectoryDataset` (via ``to_array``)
    and objects exposing ``trajectories`` or ``__array__``.
    """
    if data is None:
        raise ValueError(f"{name} data is required")
    if hasattr(data, "to_array"):  # numpyro_sda.data.TrajectoryDataset (read fully into memory)
        data = data.to_array()
    else:
        for attr in ("trajectories", "data", "x"):
            if not hasattr(data, "__array__") and hasattr(data, attr):
                data = getattr(data, attr)
                break
    try:
        x = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} data must be an array of trajectories (N, T, *state_shape) or a dataset "
            f"exposing one, got {type(data).__name__}"
        ) from err
    s = score.state_shape
    if x.ndim != 2 + len(s):
        raise ValueError(
            f"{name} data must have shape (N, T, *{s}) = {2 + len(s)} axes, got {x.shape}"
        )
    if any(a is not None and a != b for a, b in zip(s, x.shape[2:], strict=True)):
        raise ValueError(
            f"{name} data has state shape {x.shape[2:]}, but the score expects {s} "
            "(mismatched feature counts)"
        )
    if x.shape[0] < 1:
        raise ValueError(f"{name} data holds no trajectories")
    if x.shape[1] < score.window:
        raise ValueError(
            f"{name} trajectories have {x.shape[1]} states, fewer than the window "
            f"({score.window})"
        )
    bad = ~np.isfinite(x)
    if bad.any():
        n_traj = int(bad.reshape(x.shape[0], -1).any(axis=1).sum())
        raise ValueError(
            f"{name} data contains {int(bad.sum())} NaN/inf values (in {n_traj} of "
            f"{x.shape[0]} trajectories); clean or drop them before training"
        )
    return jnp.asarray(x)


def dsm_loss(model: LocalScore, w: Array, t: Array, eps: Array) -> Array:
    r"""Denoising score matching loss of the network's raw output :math:`F_\phi`.

    Mean of :math:`(F_\phi(\mu(t) w + \sigma(t) \varepsilon, t) - \varepsilon)^2` for a noise
    predictor (``model.prediction == "eps"``, Rozet & Louppe, 2023, Eq. 8) and of
    :math:`(F_\phi(\cdot, t) - (\mu(t) \varepsilon - \sigma(t) w))^2` for a velocity predictor
    (``"v"``; Salimans & Ho, 2022): in noise terms the latter weights the error by
    :math:`(\mu^2 + \sigma^2)^2/\mu^2`, i.e. by the error it makes in Tweedie's denoiser.
    """
    shape = (-1,) + (1,) * (w.ndim - 1)
    mu = model.sde.mu(t).reshape(shape)
    sigma = model.sde.sigma(t).reshape(shape)
    x_t = mu * w + sigma * eps
    target = eps if model.prediction == "eps" else model.sde.velocity(w, t.reshape(shape), eps)
    return jnp.mean((model.network_output(x_t, t) - target) ** 2)


TIME_SAMPLINGS = ("uniform", "mixed")


def sample_times(key: Array, n: int, sde, how: str = "uniform", dtype=jnp.float32) -> Array:
    r"""Diffusion times of a training batch.

    * ``"uniform"``: :math:`t \sim U(0, 1)` (Rozet & Louppe, 2023).
    * ``"mixed"``: half of the batch :math:`U(0, 1)`, the other half log-uniform in the
      noise-to-signal ratio :math:`\tilde\sigma = \sigma(t)/\mu(t)` over the schedule's range
      (:math:`10^{-3}` to :math:`10^{3}` for the default schedule), mapped back to :math:`t`. With
      the cosine schedule, uniform :math:`t` puts about 2% of the batch below
      :math:`\tilde\sigma = 0.03`, where the fine structure of a trajectory (e.g. the process
      noise of one transition) is decided; the mixture puts about 14% there. The minimiser of the
      DSM loss at each :math:`t` is unchanged (it is an importance weighting of the noise levels,
      as the log-normal levels of Karras et al., 2022, "Elucidating the design space of
      diffusion-based generative models", Section 5); only the network's capacity moves.
    """
    if how not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time_sampling {how!r}; expected one of {TIME_SAMPLINGS}")
    k1, k2 = jax.random.split(key)
    t = jax.random.uniform(k1, (n,), dtype)
    if how == "uniform":
        return t
    import numpy as np

    dense, ratio = sde.ratio_table(4097)
    log_ratio = np.maximum.accumulate(np.log(ratio))  # monotone for interpolation
    u = jax.random.uniform(k2, (n,), jnp.float32, log_ratio[0], log_ratio[-1])
    t_log = jnp.interp(u, jnp.asarray(log_ratio, jnp.float32), jnp.asarray(dense, jnp.float32))
    half = jnp.arange(n) % 2 == 1
    return jnp.where(half, t_log.astype(dtype), t)


def make_loss_and_grad(
    graphdef: nnx.GraphDef,
    batch_size: int,
    window: int,
    batch_sharding: NamedSharding | None = None,
    time_sampling: str = "uniform",
) -> Callable[..., tuple[Array, Any]]:
    r"""The pure function ``(params, rest, data, key, n) -> (loss, grads)`` of step ``n``.

    Step ``n`` draws ``batch_size`` windows, times (:func:`sample_times`, ``time_sampling``) and
    noises from ``fold_in(key, n)``. With ``batch_sharding`` (a :class:`~jax.sharding.NamedSharding` of the
    batch axis, see :mod:`numpyro_sda.parallel`) the batch is split over the devices while the
    parameters stay replicated; XLA sums the per-device gradients (an all-reduce). The random
    draws do not depend on the sharding (``jax_threefry_partitionable``), so the loss and
    gradients equal the single-device ones to float rounding.
    """

    def loss_fn(p, rest, w, t, eps):
        return dsm_loss(nnx.merge(graphdef, p, rest), w, t, eps)

    def loss_and_grad(p, rest, data, key, n):
        kw, kt, ke = jax.random.split(jax.random.fold_in(key, n), 3)
        w = sample_windows(kw, data, window, batch_size)
        t = sample_times(kt, batch_size, nnx.merge(graphdef, p, rest).sde, time_sampling, w.dtype)
        eps = jax.random.normal(ke, w.shape, w.dtype)
        if batch_sharding is not None:
            w, t, eps = (jax.lax.with_sharding_constraint(a, batch_sharding) for a in (w, t, eps))
        return jax.value_and_grad(loss_fn)(p, rest, w, t, eps)

    return loss_and_grad


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    batch_size: int,
    window: int,
    ema: float | None,
    batch_sharding: NamedSharding | None = None,
    time_sampling: str = "uniform",
) -> Callable[..., tuple[tuple, Array]]:
    r"""One optimiser step ``step(carry, rest, data, key) -> (carry, loss)``, pure.

    ``carry = (params, opt_state, ema_params | None, n)``; the loss is computed before the
    update. The EMA follows :math:`\bar\theta \leftarrow \beta \bar\theta + (1 - \beta)\theta`.
    """
    loss_and_grad = make_loss_and_grad(graphdef, batch_size, window, batch_sharding,
                                       time_sampling)

    def step(carry, rest, data, key):
        p, o, e, n = carry
        loss, grads = loss_and_grad(p, rest, data, key, n)
        updates, o = tx.update(grads, o, p)
        p = optax.apply_updates(p, updates)
        if e is not None:
            e = jax.tree_util.tree_map(lambda a, b: ema * a + (1.0 - ema) * b, e, p)
        return (p, o, e, n + 1), loss

    return step


def make_chunk_fn(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    batch_size: int,
    window: int,
    ema: float | None,
    batch_sharding: NamedSharding | None = None,
    time_sampling: str = "uniform",
) -> Callable[..., tuple[tuple, Array]]:
    """The (un-jitted) function ``run(carry, rest, data, key, length) -> (carry, losses)`` that
    performs ``length`` optimiser steps (:func:`make_train_step`) in one :func:`jax.lax.scan`.

    ``rest`` is the module's non-trainable state; ``data`` is the ``(N, T, *state_shape)``
    training array.
    """
    step = make_train_step(graphdef, tx, batch_size, window, ema, batch_sharding, time_sampling)

    def run_chunk(carry, rest, data, key, length):
        return jax.lax.scan(lambda c, _: step(c, rest, data, key), carry, None, length=length)

    return run_chunk


@functools.lru_cache(maxsize=16)
def _compiled_chunk(graphdef, batch_size, window, ema, steps, lr, weight_decay, schedule, clip,
                    batch_sharding=None, time_sampling="uniform"):
    # cached so that repeated train_score calls with one configuration compile once
    tx = make_optimizer(steps, lr, weight_decay, schedule, clip)
    run = make_chunk_fn(graphdef, tx, batch_size, window, ema, batch_sharding, time_sampling)
    return jax.jit(run, static_argnums=4), tx


@functools.partial(jax.jit, static_argnums=(2, 3))
def _validation_set(key: Array, data: Array, size: int, window: int):
    kw, kt, ke = jax.random.split(key, 3)
    w = sample_windows(kw, data, window, size)
    t = jax.random.uniform(kt, (size,), w.dtype)
    return w, t, jax.random.normal(ke, w.shape, w.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _validation_loss(graphdef, params, rest, w, t, eps):
    return dsm_loss(nnx.merge(graphdef, params, rest), w, t, eps)


def make_optimizer(
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    schedule: str = "linear",
    clip: float | None = 1.0,
) -> optax.GradientTransformation:
    """AdamW with a warm-up-free ``"linear"`` or ``"cosine"`` decay to 0 over ``steps``, after
    clipping the gradient's global norm to ``clip`` (``None``: no clipping)."""
    sched = make_optimizer_schedule(steps, lr, schedule)
    parts = [] if clip is None else [optax.clip_by_global_norm(clip)]
    parts.append(optax.adamw(sched, weight_decay=weight_decay))
    return optax.chain(*parts)


def _check_settings(steps, batch_size, lr, weight_decay, schedule, ema, clip, chunk) -> None:
    for name, value in (("steps", steps), ("batch_size", batch_size), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and positive, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if ema is not None and not (0.0 < ema < 1.0):
        raise ValueError(f"ema must be a decay in (0, 1) or None, got {ema}")
    if clip is not None and not (clip > 0):
        raise ValueError(f"clip must be positive or None, got {clip}")


@dataclass(frozen=True)
class TrainConfig:
    """Validated, immutable training settings of :func:`train_score` (see its arguments).

    ``train_score(score, train, valid, config=TrainConfig(steps=10_000, batch_size=32))`` and
    ``train_score(score, train, valid, steps=10_000, batch_size=32)`` are equivalent.
    :meth:`recorded` is what checkpoints store and what ``resume`` compares.
    """

    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-3
    schedule: str = "linear"
    ema: float | None = None
    clip: float | None = 1.0
    chunk: int = 100
    seed: int = 0
    valid_size: int = 1024
    checkpoint_every: int | None = None
    time_sampling: str = "uniform"

    def __post_init__(self) -> None:
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, "
                             f"got {self.time_sampling!r}")
        _check_settings(self.steps, self.batch_size, self.lr, self.weight_decay, self.schedule,
                        self.ema, self.clip, self.chunk)
        if isinstance(self.valid_size, bool) or int(self.valid_size) < 1:
            raise ValueError(f"valid_size must be a positive integer, got {self.valid_size!r}")
        if self.checkpoint_every is not None and int(self.checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every!r}")

    @property
    def save_every(self) -> int:
        """Steps between checkpoints (default ``10 * chunk``)."""
        return 10 * int(self.chunk) if self.checkpoint_every is None else int(self.checkpoint_every)

    def recorded(self) -> dict[str, Any]:
        """The settings a checkpoint records (a resumed run must use the same)."""
        return dict(
            steps=int(self.steps),
            batch_size=int(self.batch_size),
            lr=float(self.lr),
            weight_decay=float(self.weight_decay),
            schedule=self.schedule,
            ema=None if self.ema is None else float(self.ema),
            clip=None if self.clip is None else float(self.clip),
            seed=int(self.seed),
            time_sampling=self.time_sampling,
        )


def _batch_sharding(mesh: Mesh | None | bool, batch_size: int) -> NamedSharding | None:
    """The batch sharding of data-parallel training, or ``None`` (one device)."""
    if mesh is False:
        return None
    explicit = mesh is not None and mesh is not True
    if not explicit and len(jax.devices()) == 1:
        return None
    mesh = draws_mesh() if not explicit else mesh
    axis = DRAWS if DRAWS in mesh.axis_names else mesh.axis_names[0]
    d = num_shards(mesh, axis=axis)
    if d == 1:
        return None
    if batch_size % d:
        if explicit:
            raise ValueError(
                f"batch_size {batch_size} is not a multiple of the {d} devices of the mesh's "
                f"{axis!r} axis; choose a multiple or pass mesh=False"
            )
        warnings.warn(
            f"train_score: batch_size {batch_size} is not a multiple of the {d} devices; "
            "training on one device (pass a batch_size that is a multiple to shard it)",
            RuntimeWarning, stacklevel=3,
        )
        return None
    check_partitionable()
    return draws_sharding(mesh, axis=axis)


class _Checkpointer:
    """Checkpoint writes of one training run: a writability check up front, atomic saves of
    ``carry = (params, opt_state, ema, step)``, and restoring a run to resume."""

    def __init__(self, path, score: LocalScore, settings: dict[str, Any], every: int) -> None:
        self.path = None if path is None else Path(path)
        self.score, self.settings, self.every = score, settings, every
        if self.path is not None:
            check_writable(self.path)

    def save(self, carry: tuple, elapsed: float) -> None:
        """Write ``carry``; ``elapsed`` (training seconds so far, over every resumed run) goes
        into the header next to the settings, so that a resumed run reports its whole time."""
        if self.path is None:
            return
        p, o, e, n = carry
        nnx.update(self.score, p)
        save_score(self.path, self.score, opt_state=o, ema=e, step=int(n),
                   config={**self.settings, "elapsed": round(float(elapsed), 3)},
                   normalization=self.score.normalization)

    def restore(self, opt_state, ema_params) -> tuple | None:
        """``((params, opt_state, ema, step), elapsed)`` from the checkpoint (``elapsed``: the
        training seconds it records, 0 for checkpoints written before it did), or ``None`` when
        absent."""
        if self.path is None or not self.path.is_file():
            return None
        ckpt = load_checkpoint(self.path, self.score, use_ema=False)  # checks the architecture
        stored = {k: ckpt.training.get(k) for k in self.settings}
        if stored.get("time_sampling") is None:  # written before time_sampling existed
            stored["time_sampling"] = "uniform"
        if stored != self.settings:
            diff = {k: (stored[k], v) for k, v in self.settings.items() if stored[k] != v}
            raise ValueError(
                f"cannot resume from {self.path}: training settings differ (stored, given): "
                f"{diff}"
            )
        params = nnx.state(self.score, nnx.Param)
        opt_state = ckpt.opt_state(opt_state)
        ema_params = ckpt.ema(params) if ema_params is not None else None
        elapsed = float(ckpt.training.get("elapsed") or 0.0)
        return (params, opt_state, ema_params, int(ckpt.step or 0)), elapsed


def run_chunks(run_chunk, carry, rest, data, key, *, start: int, steps: int, chunk: int):
    """Generator over compiled chunks: yields ``(new_carry, losses, step, length)`` after each
    chunk of at most ``chunk`` steps from ``start`` to ``steps``, waiting for the results in a
    way Ctrl-C can interrupt (:func:`~numpyro_sda.parallel.block_interruptibly`). The caller
    decides whether to keep ``new_carry`` (it passes the kept carry back with ``send``)."""
    step = start
    while step < steps:
        length = min(chunk, steps - step)
        new_carry, losses = block_interruptibly(run_chunk(carry, rest, data, key, length))
        kept = yield new_carry, np.asarray(losses), step, length
        if kept is None:
            return
        carry = kept
        step += length


def train_score(
    score: LocalScore,
    train: Any,
    valid: Any,
    config: TrainConfig | None = None,
    *,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    schedule: str = "linear",
    ema: float | None = None,
    clip: float | None = 1.0,
    chunk: int = 100,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    valid_size: int = 1024,
    normalization: tuple[Any, Any] | None = None,
    time_limit: float | None = None,
    callback: Callable[[int, float, float], bool | None] | None = None,
    precision: str | None = None,
    mesh: Mesh | bool | None = None,
    time_sampling: str = "uniform",
) -> TrainResult:
    """Train a :class:`~numpyro_sda.score.LocalScore` by denoising score matching.

    Args:
        score: the local score (trained in place).
        train, valid: normalised trajectories ``(N, T, *state_shape)``: arrays, or
            :class:`numpyro_sda.data.TrajectoryDataset` splits (read into memory once; their
            ``(mean, std)`` is recorded as the normalisation). Each step draws ``batch_size``
            windows of ``score.window`` consecutive states uniformly (trajectory and start) on
            the device.
        config: a :class:`TrainConfig` holding the settings below (``steps`` ...
            ``checkpoint_every``); when given, those keywords must be left at their defaults.
        steps: total number of optimiser steps (the learning rate decays to 0 over them).
        batch_size: windows per step (paper: 64).
        lr, weight_decay: AdamW settings (paper: 1e-3, 1e-3).
        schedule: ``"linear"`` (paper) or ``"cosine"`` decay, without warm-up.
        ema: decay of an exponential moving average of the weights (e.g. 0.999), or ``None``;
            when set, validation uses and the returned score holds the EMA weights.
        clip: max global gradient norm (``None``: no clipping).
        time_sampling: how the diffusion times of a batch are drawn, ``"uniform"`` (paper) or
            ``"mixed"`` (half log-uniform in the noise-to-signal ratio); see
            :func:`sample_times`.
        chunk: optimiser steps per compiled call (one ``jit`` + ``lax.scan``).
        seed: random seed (windows, times, noise; the weights come from the score's own init).
        checkpoint: file to write weights + optimiser state + settings to (atomically) every
            ``checkpoint_every`` steps (default ``10 * chunk``), at the end and on Ctrl-C. Its
            folder is checked for writing before training starts.
        resume: continue from ``checkpoint`` when it exists (same settings required).
        progress: show a tqdm bar over steps (with ETA) and the train/valid loss.
        valid_size: number of fixed validation windows (fixed times and noises too, so the
            validation loss is comparable between evaluations).
        normalization: ``(mean, std)`` of the data, recorded on the score and in checkpoints
            (default: taken from a normalised ``TrajectoryDataset``).
        time_limit: stop (after the current chunk) when this many seconds have passed in this
            call (a resumed run gets its own limit).
        callback: ``callback(step, train_loss, valid_loss)`` after each chunk; returning
            ``True`` stops training.
        precision: ``"bf16"`` or ``"fp32"``: switch the score's compute precision before
            training (:meth:`LocalScore.set_precision`; recorded in its config and the
            checkpoint). ``None`` keeps the score's.
        mesh: data parallelism. ``None`` (default): when several devices are visible, split
            each batch over all of them (:func:`numpyro_sda.parallel.draws_mesh`) with the
            parameters replicated; a :class:`~jax.sharding.Mesh` to choose the devices (batch
            split over its ``"draws"`` axis, or its first axis); ``False``: one device.
            Results equal one device's up to float rounding; checkpoints are the same.

    Returns:
        a :class:`TrainResult` (unpacks as ``score, history``).

    Raises:
        ValueError: bad settings, data with NaNs, mismatched state shapes, or a checkpoint
            that does not match (architecture or settings).
        OSError: the checkpoint cannot be written (raised before training).
        KeyboardInterrupt: on Ctrl-C, within a fraction of a second, after keeping the last
            finished chunk: the score holds its weights and the checkpoint (if any) is saved.
    """
    if not isinstance(score, LocalScore):
        raise TypeError(f"score must be a LocalScore, got {type(score).__name__}")
    given = dict(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                 schedule=schedule, ema=ema, clip=clip, chunk=chunk, seed=seed,
                 valid_size=valid_size, checkpoint_every=checkpoint_every,
                 time_sampling=time_sampling)
    if config is None:
        if steps is None:
            raise ValueError("steps is required (or pass config=TrainConfig(steps=...))")
        config = TrainConfig(**given)
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    else:
        defaults = TrainConfig(steps=1)
        clash = [k for k, v in given.items() if k != "steps" and v != getattr(defaults, k)]
        if steps is not None or clash:
            raise ValueError(
                f"pass the settings either in config or as keywords, not both: {clash or ['steps']}"
            )
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    settings = config.recorded()
    checkpointer = _Checkpointer(checkpoint, score, settings, config.save_every)
    train_x, valid_x = _prepare_data(score, train, valid, normalization)
    if precision is not None:
        score.set_precision(precision)
    batch_sharding = _batch_sharding(mesh, config.batch_size)

    graphdef, params, rest = nnx.split(score, nnx.Param, ...)
    run_chunk, tx = _compiled_chunk(
        graphdef, settings["batch_size"], score.window, settings["ema"], settings["steps"],
        settings["lr"], settings["weight_decay"], settings["schedule"], settings["clip"],
        batch_sharding, settings["time_sampling"],
    )
    carry = (params, tx.init(params),
             jax.tree_util.tree_map(jnp.copy, params) if config.ema is not None else None, 0)
    previous_elapsed = 0.0  # training seconds of the runs this one resumes
    if resume:
        restored = checkpointer.restore(carry[1], carry[2])
        if restored is not None:
            carry, previous_elapsed = restored
        graphdef, _, rest = nnx.split(score, nnx.Param, ...)
    start = int(carry[3])
    carry = (*carry[:3], jnp.asarray(start, jnp.int32))
    if batch_sharding is not None:
        rep = NamedSharding(batch_sharding.mesh, P())
        carry, rest, train_x = jax.device_put((carry, rest, train_x), rep)

    train_key, valid_key = jax.random.split(jax.random.key(config.seed))
    vw, vt, veps = _validation_set(valid_key, valid_x, int(config.valid_size), score.window)
    lr_at = make_optimizer_schedule(config.steps, config.lr, config.schedule)
    history: dict[str, list] = {k: [] for k in ("step", "train_loss", "valid_loss", "lr", "elapsed")}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, desc="train_score", unit="step",
                   dynamic_ncols=True)

    step, last_saved, stop_reason, interrupted = start, start, "completed", False
    t0 = time.perf_counter()
    chunks = run_chunks(run_chunk, carry, rest, train_x, train_key, start=start,
                        steps=config.steps, chunk=config.chunk)
    try:
        item = next(chunks, None)
        while item is not None:
            new_carry, losses, _, length = item
            p, _, e, _ = new_carry
            vloss = float(_validation_loss(graphdef, e if e is not None else p, rest, vw, vt, veps))
            if not (np.all(np.isfinite(losses)) and math.isfinite(vloss)):
                _warn_nan(losses, step, length, checkpoint)
                stop_reason = "nan"
                break
            carry, step = new_carry, step + length
            tloss = float(losses.mean())
            for k, v in zip(history, (step, tloss, vloss, float(lr_at(step)),
                                      previous_elapsed + time.perf_counter() - t0), strict=True):
                history[k].append(v)
            if bar is not None:
                bar.update(length)
                bar.set_postfix(train=f"{tloss:.4f}", valid=f"{vloss:.4f}")
            if step - last_saved >= checkpointer.every and step < config.steps:
                checkpointer.save(carry, previous_elapsed + time.perf_counter() - t0)
                last_saved = step
            if time_limit is not None and time.perf_counter() - t0 >= time_limit and step < config.steps:
                stop_reason = "time_limit"
                break
            if callback is not None and callback(step, tloss, vloss) and step < config.steps:
                stop_reason = "callback"
                break
            item = _send(chunks, carry)
    except KeyboardInterrupt:
        interrupted, stop_reason = True, "interrupted"
    finally:
        chunks.close()
        if bar is not None:
            bar.close()
    if step > last_saved or (checkpointer.path is not None and not checkpointer.path.exists()):
        checkpointer.save(carry, previous_elapsed + time.perf_counter() - t0)
    p, _, e, _ = carry
    nnx.update(score, e if e is not None else p)
    if interrupted:
        where = f"; checkpoint {checkpoint} holds step {step}" if checkpoint is not None else ""
        raise KeyboardInterrupt(f"train_score interrupted after step {step}{where}")
    elapsed = previous_elapsed + time.perf_counter() - t0
    hist = {k: np.asarray(v, np.float64 if k != "step" else np.int64) for k, v in history.items()}
    return TrainResult(score, hist, stop_reason, step, elapsed, settings)


def _send(chunks, carry):
    try:
        return chunks.send(carry)
    except StopIteration:
        return None


def _prepare_data(score, train, valid, normalization):
    train_x = as_trajectories(train, "train", score)
    valid_x = as_trajectories(valid, "valid", score)
    if normalization is None and getattr(train, "normalized", False):
        mean, std = getattr(train, "mean", None), getattr(train, "std", None)
        if mean is not None and std is not None:
            normalization = (mean, std)  # a normalised TrajectoryDataset records its statistics
    if normalization is not None:
        score.set_normalization(normalization)
    # the range SDA keeps its guided denoiser in (numpyro_sda.guidance.bounded); a channel
    # without spread (constant data) has no range to record
    try:
        score.set_data_range(np.asarray(train_x))
    except ValueError:
        warnings.warn("train_score: a channel of the training data is constant, so no data range "
                      "is recorded (SDA's bounds='auto' will not bound the guided denoiser)",
                      RuntimeWarning, stacklevel=3)
    return train_x, valid_x


def _warn_nan(losses: np.ndarray, step: int, length: int, checkpoint) -> None:
    # losses are computed before each update: a NaN produced by the chunk's last update only
    # shows in the validation loss; either way the chunk is discarded
    finite = np.isfinite(losses)
    where = f"at step {step + int(np.argmin(finite))}" if not finite.all() else (
        f"in the validation loss after step {step + length}"
    )
    warnings.warn(
        f"train_score: non-finite loss {where}; training stopped, keeping the weights of step "
        f"{step}" + (f" (last good checkpoint: {checkpoint})" if checkpoint else ""),
        RuntimeWarning,
        stacklevel=3,
    )


def make_optimizer_schedule(steps: int, lr: float, schedule: str) -> Callable[[int], float]:
    """The learning rate as a function of the step: ``"linear"`` or ``"cosine"`` decay from
    ``lr`` to 0 over ``steps``, without warm-up."""
    if schedule == "linear":
        return optax.linear_schedule(lr, 0.0, steps)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, steps)
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
