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

from numpyro_sda.checkpoint import load_checkpoint, save_score
from numpyro_sda.data import sample_windows
from numpyro_sda.score import LocalScore

__all__ = [
    "train_score",
    "TrainResult",
    "dsm_loss",
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
            previous entry; ``elapsed`` is wall time in seconds).
        stop_reason: ``"completed"``, ``"nan"`` (a non-finite loss; the last finite state is
            kept), ``"time_limit"`` or ``"callback"``.
        step: the number of optimiser steps reached.
        elapsed: training wall time in seconds (compilation included).
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
    r"""Mean of :math:`(\varepsilon_\phi(\mu(t) w + \sigma(t) \varepsilon, t) - \varepsilon)^2`."""
    shape = (-1,) + (1,) * (w.ndim - 1)
    mu = model.sde.mu(t).reshape(shape)
    sigma = model.sde.sigma(t).reshape(shape)
    x_t = mu * w + sigma * eps
    return jnp.mean((model.local(x_t, t) - eps) ** 2)


def make_chunk_fn(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    batch_size: int,
    window: int,
    ema: float | None,
) -> Callable[..., tuple[tuple, Array]]:
    """The (un-jitted) function ``run(carry, rest, data, key, length) -> (carry, losses)`` that
    performs ``length`` optimiser steps in one :func:`jax.lax.scan`.

    ``carry = (params, opt_state, ema_params | None, step)``; ``rest`` is the module's
    non-trainable state; step ``n`` draws its windows, times and noises from
    ``fold_in(key, n)``; ``data`` is the ``(N, T, *state_shape)`` training array.
    """

    def loss_fn(p, rest, w, t, eps):
        return dsm_loss(nnx.merge(graphdef, p, rest), w, t, eps)

    def run_chunk(carry, rest, data, key, length):
        def one_step(carry, _):
            p, o, e, n = carry
            kw, kt, ke = jax.random.split(jax.random.fold_in(key, n), 3)
            w = sample_windows(kw, data, window, batch_size)
            t = jax.random.uniform(kt, (batch_size,), w.dtype)
            eps = jax.random.normal(ke, w.shape, w.dtype)
            loss, grads = jax.value_and_grad(loss_fn)(p, rest, w, t, eps)
            updates, o = tx.update(grads, o, p)
            p = optax.apply_updates(p, updates)
            if e is not None:
                e = jax.tree_util.tree_map(lambda a, b: ema * a + (1.0 - ema) * b, e, p)
            return (p, o, e, n + 1), loss

        return jax.lax.scan(one_step, carry, None, length=length)

    return run_chunk


@functools.lru_cache(maxsize=16)
def _compiled_chunk(graphdef, batch_size, window, ema, steps, lr, weight_decay, schedule, clip):
    # cached so that repeated train_score calls with one configuration compile once
    tx = make_optimizer(steps, lr, weight_decay, schedule, clip)
    run = make_chunk_fn(graphdef, tx, batch_size, window, ema)
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
    if not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
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


def train_score(
    score: LocalScore,
    train: Any,
    valid: Any,
    *,
    steps: int,
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
) -> TrainResult:
    """Train a :class:`~numpyro_sda.score.LocalScore` by denoising score matching.

    Args:
        score: the local score (trained in place).
        train, valid: normalised trajectories ``(N, T, *state_shape)``: arrays, or
            :class:`numpyro_sda.data.TrajectoryDataset` splits (read into memory once; their
            ``(mean, std)`` is recorded as the normalisation). Each step draws ``batch_size``
            windows of ``score.window`` consecutive states uniformly (trajectory and start) on
            the device.
        steps: total number of optimiser steps (the learning rate decays to 0 over them).
        batch_size: windows per step (paper: 64).
        lr, weight_decay: AdamW settings (paper: 1e-3, 1e-3).
        schedule: ``"linear"`` (paper) or ``"cosine"`` decay, without warm-up.
        ema: decay of an exponential moving average of the weights (e.g. 0.999), or ``None``;
            when set, validation uses and the returned score holds the EMA weights.
        clip: max global gradient norm (``None``: no clipping).
        chunk: optimiser steps per compiled call (one ``jit`` + ``lax.scan``).
        seed: random seed (windows, times, noise; the weights come from the score's own init).
        checkpoint: file to write weights + optimiser state + settings to (atomically) every
            ``checkpoint_every`` steps (default ``10 * chunk``) and at the end.
        resume: continue from ``checkpoint`` when it exists (same settings required).
        progress: show a tqdm bar with the train/valid loss.
        valid_size: number of fixed validation windows (fixed times and noises too, so the
            validation loss is comparable between evaluations).
        normalization: ``(mean, std)`` of the data, recorded on the score and in checkpoints
            (default: taken from a normalised ``TrajectoryDataset``).
        time_limit: stop (after the current chunk) when this many seconds have passed.
        callback: ``callback(step, train_loss, valid_loss)`` after each chunk; returning
            ``True`` stops training.

    Returns:
        a :class:`TrainResult` (unpacks as ``score, history``).

    Raises:
        ValueError: bad settings, data with NaNs, mismatched state shapes, or a checkpoint
            that does not match (architecture or settings).
    """
    if not isinstance(score, LocalScore):
        raise TypeError(f"score must be a LocalScore, got {type(score).__name__}")
    _check_settings(steps, batch_size, lr, weight_decay, schedule, ema, clip, chunk)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    train_x = as_trajectories(train, "train", score)
    valid_x = as_trajectories(valid, "valid", score)
    if normalization is None and getattr(train, "normalized", False):
        mean, std = getattr(train, "mean", None), getattr(train, "std", None)
        if mean is not None and std is not None:
            normalization = (mean, std)  # a normalised TrajectoryDataset records its statistics
    if normalization is not None:
        score.set_normalization(normalization)
    settings = dict(
        steps=int(steps),
        batch_size=int(batch_size),
        lr=float(lr),
        weight_decay=float(weight_decay),
        schedule=schedule,
        ema=None if ema is None else float(ema),
        clip=None if clip is None else float(clip),
        seed=int(seed),
    )
    checkpoint_every = 10 * chunk if checkpoint_every is None else int(checkpoint_every)

    graphdef, params, rest = nnx.split(score, nnx.Param, ...)
    run_chunk, tx = _compiled_chunk(
        graphdef,
        settings["batch_size"],
        score.window,
        settings["ema"],
        settings["steps"],
        settings["lr"],
        settings["weight_decay"],
        schedule,
        settings["clip"],
    )
    opt_state = tx.init(params)
    ema_params = jax.tree_util.tree_map(jnp.copy, params) if ema is not None else None
    start = 0
    if resume and Path(checkpoint).is_file():
        # checks the architecture and loads the (raw) weights
        ckpt = load_checkpoint(checkpoint, score, use_ema=False)
        stored = {k: ckpt.training.get(k) for k in settings}
        if stored != settings:
            diff = {k: (stored[k], settings[k]) for k in settings if stored[k] != settings[k]}
            raise ValueError(
                f"cannot resume from {checkpoint}: training settings differ (stored, given): "
                f"{diff}"
            )
        graphdef, params, rest = nnx.split(score, nnx.Param, ...)
        opt_state = ckpt.opt_state(opt_state)
        if ema is not None:
            ema_params = ckpt.ema(params)
        start = int(ckpt.step or 0)

    window = score.window
    base_key = jax.random.key(seed)
    train_key, valid_key = jax.random.split(base_key)

    vw, vt, veps = _validation_set(valid_key, valid_x, int(valid_size), window)
    lr_at = make_optimizer_schedule(steps, lr, schedule)

    history: dict[str, list] = {k: [] for k in ("step", "train_loss", "valid_loss", "lr", "elapsed")}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="train_score", unit="step", dynamic_ncols=True)

    def save(p, o, e, n):
        if checkpoint is None:
            return
        nnx.update(score, p)
        save_score(
            checkpoint,
            score,
            opt_state=o,
            ema=e,
            step=n,
            config=settings,
            normalization=score.normalization,
        )

    carry = (params, opt_state, ema_params, jnp.asarray(start, jnp.int32))
    step = start
    stop_reason = "completed"
    last_saved = start
    t0 = time.perf_counter()
    try:
        while step < steps:
            length = min(chunk, steps - step)
            new_carry, losses = run_chunk(carry, rest, train_x, train_key, length)
            losses = np.asarray(losses)
            p, o, e, _ = new_carry
            vloss = float(_validation_loss(graphdef, e if e is not None else p, rest, vw, vt, veps))
            if not (np.all(np.isfinite(losses)) and math.isfinite(vloss)):
                # losses are computed before each update: a NaN produced by the chunk's last
                # update only shows in the validation loss; either way the chunk is discarded
                finite = np.isfinite(losses)
                where = f"at step {step + int(np.argmin(finite))}" if not finite.all() else (
                    f"in the validation loss after step {step + length}"
                )
                warnings.warn(
                    f"train_score: non-finite loss {where}; training stopped, keeping the "
                    f"weights of step {step}"
                    + (f" (last good checkpoint: {checkpoint})" if checkpoint else ""),
                    RuntimeWarning,
                    stacklevel=2,
                )
                stop_reason = "nan"
                break
            carry = new_carry
            step += length
            tloss = float(losses.mean())
            history["step"].append(step)
            history["train_loss"].append(tloss)
            history["valid_loss"].append(vloss)
            history["lr"].append(float(lr_at(step)))
            history["elapsed"].append(time.perf_counter() - t0)
            if bar is not None:
                bar.update(length)
                bar.set_postfix(train=f"{tloss:.4f}", valid=f"{vloss:.4f}")
            if checkpoint is not None and step - last_saved >= checkpoint_every and step < steps:
                save(p, o, e, step)
                last_saved = step
            if time_limit is not None and time.perf_counter() - t0 >= time_limit and step < steps:
                stop_reason = "time_limit"
                break
            if callback is not None and callback(step, tloss, vloss) and step < steps:
                stop_reason = "callback"
                break
    finally:
        if bar is not None:
            bar.close()
    p, o, e, _ = carry
    if step > last_saved or (checkpoint is not None and not Path(checkpoint).exists()):
        save(p, o, e, step)
    nnx.update(score, e if e is not None else p)
    elapsed = time.perf_counter() - t0
    hist = {k: np.asarray(v, np.float64 if k != "step" else np.int64) for k, v in history.items()}
    return TrainResult(score, hist, stop_reason, step, elapsed, settings)


def make_optimizer_schedule(steps: int, lr: float, schedule: str) -> Callable[[int], float]:
    """The learning rate as a function of the step: ``"linear"`` or ``"cosine"`` decay from
    ``lr`` to 0 over ``steps``, without warm-up."""
    if schedule == "linear":
        return optax.linear_schedule(lr, 0.0, steps)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, steps)
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
