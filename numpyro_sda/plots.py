r"""Matplotlib figures of posterior trajectories, calibration and 2-D fields.

* :func:`plot_trajectories` — per state variable: the posterior median with central credible
  bands (quantiles :math:`(1 \mp c)/2` of the draws at each time), a few draws, the truth and
  the observations.
* :func:`plot_rank_histogram` — frequency of the truth's rank among the draws (see
  :func:`numpyro_sda.metrics.rank_histogram`) against the uniform level :math:`1/(M+1)`.
* :func:`plot_fields` — for 2-D fields: truth / observation / posterior mean / posterior std
  panels, one column per selected time.
* :func:`vorticity` — :math:`\omega = \partial_x v - \partial_y u` of a periodic velocity field
  on :math:`[0, 2\pi)^2`, by spectral differentiation.
* :func:`vorticity_movie` — an animation of one or more field sequences side by side, written as
  a GIF with :class:`matplotlib.animation.PillowWriter` when a path is given.

Every function returns the figure (the movie returns its animation; ``anim._fig`` is the figure)
and never saves unless asked: ``fig.savefig(...)`` is the caller's choice. Inputs are draws
``(M, length, *state)`` (or a run :class:`~numpyro_sda.results.InferenceMethod`); with
``system=...`` they are converted to physical units first.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "plot_trajectories",
    "plot_rank_histogram",
    "plot_fields",
    "vorticity",
    "vorticity_movie",
]


def _draws(samples: Any, system: Any = None) -> np.ndarray:
    from numpyro_sda.comparison import trajectories_of

    x = trajectories_of(samples, "samples")
    return np.asarray(system.denormalize(x)) if system is not None else x


def _phys(a: Any, system: Any) -> np.ndarray | None:
    if a is None:
        return None
    return np.asarray(system.denormalize(a)) if system is not None else np.asarray(a)


def plot_trajectories(
    samples: Any,
    *,
    truth: Any = None,
    observations: Any = None,
    obs_times: Any = None,
    obs_states: Sequence[int] | None = None,
    time: Any = None,
    state_names: Sequence[str] | None = None,
    credible: Sequence[float] = (0.5, 0.9),
    num_draws: int = 0,
    system: Any = None,
    color: str = "C0",
    label: str = "posterior",
    title: str | None = None,
    axes: Any = None,
):
    """Posterior trajectories of a vector state, one panel per state variable.

    Args:
        samples: draws ``(M, length, d)`` (or ``(M, length)`` for a scalar state) or a run
            method. Draws with NaN or inf are excluded, with a ``RuntimeWarning`` giving their
            number.
        truth: ``(length, d)`` (or ``(length,)``).
        observations: direct observations of some state variables, ``(n_obs, k)`` (or
            ``(n_obs,)`` for ``k = 1``), drawn at ``obs_times`` (indices into the time axis, or
            values of ``time``) on the panels ``obs_states`` (``k`` state indices). With
            ``system``, they are converted with the statistics of those states.
        time: x-axis values (default ``0..length-1``).
        credible: central credible levels drawn as nested bands.
        num_draws: also draw this many individual trajectories.
        system: converts draws, truth and observations to physical units.
        axes: ``d`` existing axes to draw on (default: a new figure).
    """
    import matplotlib.pyplot as plt

    x = _draws(samples, system)
    scalar_state = x.ndim == 2
    if scalar_state:
        x = x[..., None]
    if x.ndim != 3:
        raise ValueError(f"plot_trajectories needs draws of shape (draws, length, d), got "
                         f"{x.shape}; use plot_fields for 2-D fields")
    finite = np.all(np.isfinite(x.reshape(x.shape[0], -1)), axis=1)
    if not finite.all():
        if not finite.any():
            raise ValueError(f"plot_trajectories: all {x.shape[0]} draws contain NaN or infinite "
                             "values; nothing to plot")
        warnings.warn(
            f"plot_trajectories: {int((~finite).sum())} of {x.shape[0]} draws contain NaN or "
            f"infinite values and are excluded from the bands, the median and the drawn "
            f"trajectories", RuntimeWarning, stacklevel=2,
        )
        x = x[finite]
    m, length, d = x.shape
    t = np.arange(length) if time is None else np.asarray(time)
    if t.shape != (length,):
        raise ValueError(f"time must have {length} entries, got shape {t.shape}")
    truth_p = _phys(truth, system)
    if truth_p is not None and scalar_state and truth_p.shape == (length,):
        truth_p = truth_p[:, None]
    if truth_p is not None and truth_p.shape != (length, d):
        raise ValueError(f"truth must have shape {(length, d)}, got {truth_p.shape}")
    names = [f"$x_{i}$" for i in range(d)] if state_names is None else list(state_names)
    if len(names) != d:
        raise ValueError(f"state_names has {len(names)} entries for {d} state variables")
    levels = sorted(float(c) for c in credible)
    if any(not 0.0 < c < 1.0 for c in levels):
        raise ValueError(f"credible levels must lie in (0, 1), got {credible}")

    obs = None
    if observations is not None:
        if obs_times is None or obs_states is None:
            raise ValueError("observations need obs_times (when) and obs_states (which state "
                             "variables they observe directly)")
        obs = np.asarray(observations, dtype=float)
        obs = obs[:, None] if obs.ndim == 1 else obs
        ot_ = np.asarray(obs_times)
        states = [int(s) for s in obs_states]
        if obs.shape != (ot_.shape[0], len(states)):
            raise ValueError(f"observations must have shape (len(obs_times), len(obs_states)) = "
                             f"{(ot_.shape[0], len(states))}, got {obs.shape}")
        if system is not None:
            mean = np.broadcast_to(np.asarray(system.mean, dtype=float), (d,))
            std = np.broadcast_to(np.asarray(system.std, dtype=float), (d,))
            obs = mean[states] + std[states] * obs
        obs_t = t[ot_] if np.issubdtype(ot_.dtype, np.integer) else ot_

    if axes is None:
        fig, axes = plt.subplots(d, 1, figsize=(8, 1.9 * d + 0.6), sharex=True, squeeze=False)
        axes = axes[:, 0]
    else:
        axes = np.atleast_1d(axes).ravel()
        if axes.size != d:
            raise ValueError(f"axes must hold {d} axes, got {axes.size}")
        fig = axes[0].figure
    for i, ax in enumerate(axes):
        xi = x[:, :, i]
        for c in reversed(levels):
            lo, hi = np.quantile(xi, [(1 - c) / 2, (1 + c) / 2], axis=0)
            ax.fill_between(t, lo, hi, color=color, alpha=0.15 + 0.2 * (1 - c), lw=0,
                            label=f"{int(round(100 * c))}% band" if i == 0 else None)
        for k in range(min(num_draws, m)):
            ax.plot(t, xi[k], color=color, lw=0.5, alpha=0.4)
        ax.plot(t, np.median(xi, axis=0), color=color, lw=1.5, label=f"{label} median")
        if truth_p is not None:
            ax.plot(t, truth_p[:, i], color="k", ls="--", lw=1.2, label="truth")
        if obs is not None and i in states:
            j = states.index(i)
            ax.plot(obs_t, obs[:, j], "o", color="C3", ms=4, mfc="none", mew=1.2,
                    label="observations")
        ax.set_ylabel(names[i])
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time")
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[0].legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.01, 1.0, 0.1),
                   mode="expand", fontsize=8, ncol=min(len(labels), 5), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_rank_histogram(
    samples: Any = None,
    truth: Any = None,
    *,
    counts: Any = None,
    bins: int | None = None,
    ax: Any = None,
    title: str | None = None,
    color: str = "C0",
):
    """Rank histogram of the truth among the draws, as relative frequencies per bin.

    Give ``samples`` ``(M, *shape)`` and ``truth`` ``shape``, or precomputed ``counts``
    ``(M + 1,)``. The ``M + 1`` ranks are grouped into ``bins`` contiguous groups (default
    ``min(M + 1, 20)``; rank ``r`` goes to group ``floor(r * bins / (M + 1))``) and each bar shows
    the mean frequency per rank of its group, so the dashed level :math:`1/(M+1)` of a calibrated
    ensemble applies to every bar.
    """
    import matplotlib.pyplot as plt

    from numpyro_sda.metrics import rank_histogram

    if counts is None:
        if samples is None or truth is None:
            raise ValueError("give samples and truth, or counts")
        from numpyro_sda.comparison import trajectories_of
        from numpyro_sda.results import InferenceMethod

        x = trajectories_of(samples, "samples") if isinstance(samples, InferenceMethod) else samples
        counts = rank_histogram(x, truth)
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 1 or counts.size < 2:
        raise ValueError(f"counts must be 1-D with M + 1 >= 2 entries, got shape {counts.shape}")
    n_ranks = counts.size
    bins = min(n_ranks, 20) if bins is None else int(bins)
    if not 1 <= bins <= n_ranks:
        raise ValueError(f"bins must be in [1, {n_ranks}], got {bins}")
    group = (np.arange(n_ranks) * bins) // n_ranks
    grouped = np.bincount(group, weights=counts, minlength=bins)
    width = np.bincount(group, minlength=bins)  # ranks per bin
    freq = grouped / counts.sum() / width  # mean frequency per rank in the bin
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3))
    else:
        fig = ax.figure
    edges = np.concatenate([[0], np.cumsum(width)])
    ax.bar(edges[:-1], freq, width=width, align="edge", color=color, alpha=0.8,
           edgecolor="white")
    ax.axhline(1.0 / n_ranks, color="k", ls="--", lw=1, label="calibrated")
    ax.set_xlim(0, n_ranks)
    ax.set_xlabel(f"rank of the truth among {n_ranks - 1} draws")
    ax.set_ylabel("frequency per rank")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _field_frames(a: np.ndarray, channel: int | None, what: str, state_ndim: int) -> np.ndarray:
    """Select one channel of ``(..., C, H, W)`` arrays; pass ``(..., H, W)`` through."""
    if state_ndim == 3:
        if channel is None:
            raise ValueError(f"{what} has channels: pass channel=...")
        return a[..., channel, :, :]
    return a


def plot_fields(
    samples: Any,
    *,
    truth: Any = None,
    observations: Any = None,
    obs_times: Any = None,
    times: Sequence[int] | None = None,
    channel: int | None = 0,
    system: Any = None,
    cmap: str = "RdBu_r",
    std_cmap: str = "viridis",
    title: str | None = None,
):
    """Truth / observation / posterior mean / posterior std of a 2-D field at several times.

    Args:
        samples: draws ``(M, length, H, W)`` or ``(M, length, C, H, W)``, or a run method.
        truth: ``(length, H, W)`` (or with channels).
        observations: ``(n_obs, h, w)`` (or with channels) at time indices ``obs_times``; a
            coarser grid is stretched over the same domain. Times without an observation show
            an empty panel.
        times: time indices to show (default: up to 5 evenly spaced).
        channel: which channel of multi-channel fields.
    """
    import matplotlib.pyplot as plt

    x = _draws(samples, system)
    if x.ndim not in (4, 5):
        raise ValueError(f"plot_fields needs draws (draws, length, H, W) or (draws, length, C, "
                         f"H, W), got {x.shape}")
    state_ndim = x.ndim - 2
    length = x.shape[1]
    x = _field_frames(x, channel, "samples", state_ndim)
    field_shape = x.shape[2:]
    ts = (np.unique(np.linspace(0, length - 1, min(length, 5)).round().astype(int))
          if times is None else np.asarray(times, dtype=int))
    if ts.size == 0 or ts.min() < 0 or ts.max() >= length:
        raise ValueError(f"times must be indices in [0, {length}), got {ts.tolist()}")
    mean = x.mean(0)
    std = x.std(0, ddof=1) if x.shape[0] > 1 else np.zeros_like(mean)

    rows: list[tuple[str, Any]] = []
    if truth is not None:
        tr = _field_frames(_phys(truth, system), channel, "truth", state_ndim)
        if tr.shape != (length, *field_shape):
            raise ValueError(f"truth must have shape {(length, *field_shape)} (one channel), "
                             f"got {tr.shape}")
        rows.append(("truth", tr))
    obs_map: dict[int, np.ndarray] = {}
    if observations is not None:
        if obs_times is None:
            raise ValueError("observations need obs_times (time indices of each observation)")
        ob = np.asarray(observations, dtype=float)
        if ob.ndim == state_ndim + 1 and state_ndim == 3:
            ob = ob[:, channel]
        if ob.ndim != 3 or ob.shape[0] != len(obs_times):
            raise ValueError(f"observations must have shape (len(obs_times), h, w), got "
                             f"{np.shape(observations)}")
        obs_map = {int(k): ob[i] for i, k in enumerate(np.asarray(obs_times))}
        rows.append(("observation", None))
    rows += [("posterior mean", mean), ("posterior std", std)]

    signed = [r[1][ts] for r in rows if r[1] is not None and r[0] != "posterior std"]
    signed += [obs_map[int(k)] for k in ts if int(k) in obs_map]
    vmax = max(float(np.max(np.abs(a))) for a in signed)
    smax = float(np.max(std[ts])) or 1.0
    fig, axes = plt.subplots(len(rows), ts.size, figsize=(2.1 * ts.size + 1.2, 2.1 * len(rows)),
                             squeeze=False)
    extent = (0, field_shape[1], field_shape[0], 0)
    for r, (name, data) in enumerate(rows):
        for c, k in enumerate(ts):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "observation":
                if int(k) not in obs_map:
                    ax.set_facecolor("0.92")
                    ax.text(0.5, 0.5, "no obs", ha="center", va="center",
                            transform=ax.transAxes, fontsize=8, color="0.4")
                    continue
                im = ax.imshow(obs_map[int(k)], cmap=cmap, vmin=-vmax, vmax=vmax,
                               extent=extent, interpolation="nearest")
            elif name == "posterior std":
                ims = ax.imshow(data[k], cmap=std_cmap, vmin=0, vmax=smax)
            else:
                im = ax.imshow(data[k], cmap=cmap, vmin=-vmax, vmax=vmax)
            if r == 0:
                ax.set_title(f"t = {int(k)}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.colorbar(im, ax=axes[[i for i, r in enumerate(rows) if r[0] != "posterior std"], :]
                 .ravel().tolist(), shrink=0.8, pad=0.02)
    fig.colorbar(ims, ax=axes[-1, :].ravel().tolist(), shrink=0.8, pad=0.02)
    if title:
        fig.suptitle(title)
    return fig


def vorticity(velocity: Any) -> np.ndarray:
    r"""Vorticity :math:`\omega = \partial_x v - \partial_y u` of periodic velocity fields.

    ``velocity``: ``(..., 2, H, W)`` with channels ``(u, v)``, rows along :math:`y` and columns
    along :math:`x`, on the periodic domain :math:`[0, 2\pi)^2`; derivatives are spectral.
    """
    vel = np.asarray(velocity, dtype=float)
    if vel.ndim < 3 or vel.shape[-3] != 2:
        raise ValueError(f"velocity must have shape (..., 2, H, W), got {vel.shape}")
    h, w = vel.shape[-2:]
    ky = np.fft.fftfreq(h, d=1.0 / h)[:, None]
    kx = np.fft.fftfreq(w, d=1.0 / w)[None, :]
    u_hat = np.fft.fft2(vel[..., 0, :, :])
    v_hat = np.fft.fft2(vel[..., 1, :, :])
    return np.real(np.fft.ifft2(1j * kx * v_hat - 1j * ky * u_hat))


def vorticity_movie(
    fields: Any,
    *,
    titles: Sequence[str] | None = None,
    path: str | None = None,
    fps: int = 8,
    cmap: str = "RdBu_r",
    time: Sequence[float] | None = None,
):
    """Animate field sequences side by side; write a GIF with PillowWriter when ``path`` is given.

    Args:
        fields: one sequence ``(length, H, W)``, a list of them, or a dict title -> sequence
            (e.g. ``{"truth": w_true, "SDA mean": w_mean}``); all of the same length.
        titles: panel titles (default: the dict keys).
        path: where to write the GIF (``.gif``); nothing is written when ``None``.
        fps: frames per second of the GIF.
        time: frame labels (default the frame index).

    Returns:
        The :class:`matplotlib.animation.FuncAnimation` (its figure is ``anim._fig``).
    """
    import matplotlib.pyplot as plt
    from matplotlib import animation

    if isinstance(fields, Mapping):
        titles = list(fields) if titles is None else list(titles)
        panels = [np.asarray(v, dtype=float) for v in fields.values()]
    elif isinstance(fields, list | tuple):
        panels = [np.asarray(v, dtype=float) for v in fields]
    else:
        panels = [np.asarray(fields, dtype=float)]
    if not panels or any(p.ndim != 3 for p in panels):
        raise ValueError(f"fields must be (length, H, W) arrays, got shapes "
                         f"{[p.shape for p in panels]}")
    length = panels[0].shape[0]
    if any(p.shape[0] != length for p in panels):
        raise ValueError(f"all field sequences must have the same length, got "
                         f"{[p.shape[0] for p in panels]}")
    titles = [""] * len(panels) if titles is None else list(titles)
    if len(titles) != len(panels):
        raise ValueError(f"{len(titles)} titles for {len(panels)} panels")
    labels = np.arange(length) if time is None else np.asarray(time)
    vmax = max(float(np.max(np.abs(p))) for p in panels) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.6, 2.9),
                             squeeze=False)
    images = []
    for ax, p, name in zip(axes[0], panels, titles, strict=True):
        images.append(ax.imshow(p[0], cmap=cmap, vmin=-vmax, vmax=vmax))
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(images[0], ax=axes[0].tolist(), shrink=0.8, pad=0.02)
    label = fig.suptitle(f"t = {labels[0]}", fontsize=9)

    def update(k):
        for im, p in zip(images, panels, strict=True):
            im.set_data(p[k])
        label.set_text(f"t = {labels[k]}")
        return [*images, label]

    anim = animation.FuncAnimation(fig, update, frames=length, interval=1000 / fps, blit=False)
    if path is not None:
        anim.save(path, writer=animation.PillowWriter(fps=fps))
    return anim
