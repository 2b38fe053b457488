r"""Export any inference result of this library to an :class:`arviz.InferenceData`.

This is the only module that knows ArviZ's containers: the rest of the library speaks in the
plain dictionaries of :class:`numpyro_sda.results.InferenceMethod`. ArviZ 0.23 builds the object
with :func:`arviz.from_dict`; supporting ArviZ 1.x (``xarray.DataTree``) means changing
:func:`_build` only.

Layout of the exported object (``M`` draws of trajectories of ``L`` states):

=====================  ======================================================================
group                  contents
=====================  ======================================================================
``posterior``          every site of ``get_samples()``; the draws are independent (SDA, EnKS,
                       resampled particles), so they are stored as ONE chain:
                       ``(chain=1, draw=M, time=L, *state dims)``. State dims are ``state``
                       for vector states (coordinates = ``state_names``), ``grid_y, grid_x``
                       for 2-D fields, ``channel, grid_y, grid_x`` for multi-channel fields.
``posterior_predictive``  the observed sites redrawn given each trajectory.
``observed_data``      the observed values; the first axis of a site ``s`` is the dim
                       ``s_time`` with the observation times as coordinates when
                       ``obs_times`` is given.
``constant_data``      ``s_mask`` for each ``obs_mask`` entry, and the **per-method**
                       statistics that have no draw axis: per-time traces (e.g. the particle
                       filter's ``ess``, dim ``time``), per-iteration traces (4D-Var ``cost``)
                       and scalars (``log_evidence``, ``iterations``).
``sample_stats``       the **per-draw** statistics (leading axis of length ``M``), e.g. the
                       particle log-weights; ArviZ requires ``chain, draw`` dims there, so
                       traces without a draw axis cannot live in this group. SDA's per-draw
                       total :math:`\log p(y \mid x_m)` (``"log_likelihood"``, a name ArviZ
                       reserves there) is stored as ``obs_log_likelihood``.
``log_likelihood``     (optional) element-wise :math:`\log p(y_s \mid x_m)` per observed site,
                       for ``az.loo`` / ``az.waic``.
attrs (every group)    ``method``, ``prior_site``, ``settings`` (JSON), ``wall_time``,
                       ``compile_time``, ``num_model_evals``, ``num_draws``, ``units`` and the
                       versions of numpyro_sda, jax, numpyro and arviz.
=====================  ======================================================================

The result round-trips through netCDF (``idata.to_netcdf(path)`` / ``az.from_netcdf(path)``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["to_inference_data", "state_dims"]

# Per-time / per-method statistic names: when such a statistic's leading axis happens to equal
# the number of draws, it is still treated as a per-method trace, not as a per-draw value.
_PER_METHOD_NAMES = frozenset(
    {"ess", "log_evidence", "log_evidence_increments", "cost", "costs", "grad_norm",
     "iterations", "num_iterations", "num_steps", "resampled", "acceptance", "converged",
     "mean", "std", "filter_mean", "smoother_mean", "filter_std"}
)


# Per-draw statistics whose names ArviZ reserves in ``sample_stats``.
_RENAMED_STATS = {"log_likelihood": "obs_log_likelihood"}


def state_dims(site: str, state_ndim: int) -> tuple[str, ...]:
    """Default dim names of one state: ``()``, ``("state",)``, ``("grid_y", "grid_x")`` or
    ``("channel", "grid_y", "grid_x")``.

    Fields do not use the bare names ``y`` / ``x``: models conventionally call their sites ``x``
    and ``y``, and xarray cannot hold a variable and a dim of the same name.
    """
    if state_ndim == 0:
        return ()
    if state_ndim == 1:
        return ("state",)
    if state_ndim == 2:
        return ("grid_y", "grid_x")
    if state_ndim == 3:
        return ("channel", "grid_y", "grid_x")
    return tuple(f"{site}_dim_{i}" for i in range(state_ndim))


def _json_safe(obj: Any, depth: int = 0) -> Any:
    """A JSON-serialisable summary of a settings value (arrays shown in full only when small)."""
    if depth > 6:
        return repr(obj)
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else repr(f)
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v, depth + 1) for v in obj]
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        arr = np.asarray(obj)
        if arr.size <= 16:
            return _json_safe(arr.tolist(), depth + 1)
        return f"array(shape={arr.shape}, dtype={arr.dtype})"
    if callable(obj):
        return getattr(obj, "__qualname__", None) or type(obj).__name__
    return repr(obj)


def _versions() -> dict[str, str]:
    import arviz
    import jax
    import numpyro

    from numpyro_sda._version import __version__

    return {
        "numpyro_sda_version": __version__,
        "jax_version": jax.__version__,
        "numpyro_version": numpyro.__version__,
        "arviz_version": arviz.__version__,
    }


def _np(v: Any) -> np.ndarray:
    return np.asarray(v)


def _obs_times_for(obs_times: Any, site: str) -> np.ndarray | None:
    if obs_times is None:
        return None
    if isinstance(obs_times, Mapping):
        return None if site not in obs_times else np.asarray(obs_times[site])
    return np.asarray(obs_times)


def _observation_dims(site: str, shape: tuple[int, ...], times: np.ndarray | None,
                      coords: dict[str, Any]) -> list[str]:
    dims = [f"{site}_dim_{i}" for i in range(len(shape))]
    if times is not None:
        if times.ndim != 1 or not shape or times.shape[0] != shape[0]:
            raise ValueError(
                f"obs_times for site {site!r} must be 1-D with one entry per observation along its "
                f"first axis ({shape[0] if shape else 'scalar site'}), got shape {times.shape}"
            )
        dims[0] = f"{site}_time"
        coords[f"{site}_time"] = times
    return dims


def _is_per_draw(name: str, value: np.ndarray, num_draws: int, forced: set[str]) -> bool:
    if name in forced or value.ndim == 0 or value.shape[0] != num_draws:
        return False
    return name not in _PER_METHOD_NAMES


def to_inference_data(
    result: Any,
    *,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    state_names: Sequence[str] | None = None,
    time: Any = None,
    obs_times: Any = None,
    obs_mask: Mapping[str, Any] | None = None,
    system: Any = None,
    per_method_stats: Sequence[str] = (),
    log_likelihood: bool = False,
    model_args: tuple = (),
    model_kwargs: Mapping[str, Any] | None = None,
):
    """Convert a finished :class:`~numpyro_sda.results.InferenceMethod` to ``arviz.InferenceData``.

    Args:
        result: SDA or a baseline after ``run(...)``.
        coords, dims: extra ArviZ coordinates / per-variable dims (they override the defaults).
        state_names: coordinates of the first state dim (e.g. ``["x", "y", "z"]`` for Lorenz-63).
        time: coordinates of the ``time`` dim (length ``L``); default ``0..L-1``.
        obs_times: observation times along the first axis of the observed sites: one array for
            all sites, or a dict site -> array. They become the ``<site>_time`` coordinate.
        obs_mask: dict site -> boolean mask (same shape as the observations); stored in
            ``constant_data`` as ``<site>_mask``.
        system: a :class:`~numpyro_sda.systems.base.DynamicalSystem`; when given, the trajectory
            site is denormalised to physical units (other sites are left as they are).
        per_method_stats: sample-stat names to keep out of ``sample_stats`` even when their
            leading axis has the length of the draw axis.
        log_likelihood: add the ``log_likelihood`` group (needs the model's ``model_args`` /
            ``model_kwargs``, observations included, as passed to ``run``).

    Raises:
        RuntimeError: ``result`` has not been run. TypeError/ValueError: malformed arguments.
    """
    from numpyro_sda.results import InferenceMethod

    if not isinstance(result, InferenceMethod):
        raise TypeError(f"result must be an InferenceMethod (SDA or a baseline), got "
                        f"{type(result).__name__}")
    samples = {k: _np(v) for k, v in result.get_samples().items()}
    site = result.prior_site
    if site not in samples:
        raise ValueError(f"the result has no draws of its trajectory site {site!r}; sites: "
                         f"{sorted(samples)}")
    traj = samples[site]
    if traj.ndim < 2:
        raise ValueError(f"trajectory draws must have shape (draws, length, *state), got {traj.shape}")
    if system is not None:
        traj = _np(system.denormalize(traj))
        samples[site] = traj
    num_draws, length = traj.shape[:2]
    sdims = state_dims(site, traj.ndim - 2)

    all_coords: dict[str, Any] = {}
    all_dims: dict[str, list[str]] = {}
    time_c = np.arange(length) if time is None else np.asarray(time)
    if time_c.shape != (length,):
        raise ValueError(f"time must have one entry per state ({length}), got shape {time_c.shape}")
    all_coords["time"] = time_c
    all_dims[site] = ["time", *sdims]
    for i, d in enumerate(sdims):
        all_coords[d] = np.arange(traj.shape[2 + i])
    if state_names is not None:
        if not sdims:
            raise ValueError("state_names given but the state is a scalar")
        names = [str(s) for s in state_names]
        if len(names) != traj.shape[2]:
            raise ValueError(f"state_names has {len(names)} entries but the state dim "
                             f"{sdims[0]!r} has size {traj.shape[2]}")
        all_coords[sdims[0]] = np.asarray(names)

    # observations, their predictive draws and masks
    observed = {k: _np(v) for k, v in result.observations.items()}
    predictive = {k: _np(v) for k, v in result.posterior_predictive.items()}
    constant: dict[str, np.ndarray] = {}
    for name in set(observed) | set(predictive):
        shape = observed[name].shape if name in observed else predictive[name].shape[1:]
        all_dims[name] = _observation_dims(name, shape, _obs_times_for(obs_times, name), all_coords)
    for name, mask in (obs_mask or {}).items():
        if name not in observed:
            raise ValueError(f"obs_mask names site {name!r}, which is not observed; observed "
                             f"sites: {sorted(observed)}")
        m = _np(mask).astype(bool)
        if m.shape != observed[name].shape:
            raise ValueError(f"obs_mask[{name!r}] has shape {m.shape} but the observations have "
                             f"shape {observed[name].shape}")
        constant[f"{name}_mask"] = m
        all_dims[f"{name}_mask"] = list(all_dims[name])
    for name, v in predictive.items():
        if v.ndim < 1 or v.shape[0] != num_draws:
            raise ValueError(f"posterior_predictive[{name!r}] must have a leading draw axis of "
                             f"{num_draws}, got shape {v.shape}")

    # statistics: per-draw -> sample_stats, everything else -> constant_data
    stats: dict[str, np.ndarray] = {}
    forced = set(per_method_stats)
    traj_shape = tuple(traj.shape[1:])

    def stat_dims(name: str, shape: tuple[int, ...]) -> list[str]:
        if shape == traj_shape:
            return ["time", *sdims]
        out = [f"{name}_dim_{i}" for i in range(len(shape))]
        if shape and shape[0] == length:
            out[0] = "time"
        return out

    for name, v in result.sample_stats.items():
        v = _np(v)
        if _is_per_draw(name, v, num_draws, forced):
            name = _RENAMED_STATS.get(name, name)
            stats[name] = v[None]
            all_dims.setdefault(name, stat_dims(name, v.shape[1:]))
        else:
            if name in constant:
                raise ValueError(f"sample stat {name!r} clashes with a mask name")
            constant[name] = v
            all_dims.setdefault(name, stat_dims(name, v.shape))

    loglik = None
    if log_likelihood:
        loglik = _pointwise_log_likelihood(result, samples[site] if system is None else
                                           _np(result.get_samples()[site]),
                                           model_args, dict(model_kwargs or {}))
        for name in loglik:
            if name not in all_dims and name in observed:
                all_dims[name] = _observation_dims(name, observed[name].shape,
                                                   _obs_times_for(obs_times, name), all_coords)

    all_coords.update(dict(coords or {}))
    all_dims.update({k: list(v) for k, v in (dims or {}).items()})
    attrs = {
        "method": str(result.method),
        "prior_site": str(site),
        "settings": json.dumps(_json_safe(result.settings), sort_keys=True),
        "wall_time": float(result.wall_time),
        "compile_time": float("nan") if result.compile_time is None else float(result.compile_time),
        "num_model_evals": int(result.num_model_evals),
        "num_draws": int(num_draws),
        "units": "physical" if system is not None else "model",
        "inference_library": "numpyro_sda",
        **_versions(),
    }
    return _build(
        posterior={k: v[None] for k, v in samples.items()},
        posterior_predictive={k: v[None] for k, v in predictive.items()},
        observed_data=observed,
        constant_data=constant,
        sample_stats=stats,
        log_likelihood=None if loglik is None else {k: v[None] for k, v in loglik.items()},
        coords=all_coords,
        dims=all_dims,
        attrs=attrs,
    )


def _pointwise_log_likelihood(result: Any, xs: np.ndarray, model_args: tuple,
                              model_kwargs: dict) -> dict[str, np.ndarray]:
    import jax

    from numpyro_sda.metrics import trace_for_likelihood

    traced = trace_for_likelihood(result.model, tuple(model_args), model_kwargs)
    if tuple(xs.shape[1:]) != traced.event_shape:
        raise ValueError(f"model_args give a trajectory site of shape {traced.event_shape} but the "
                         f"draws have shape {tuple(xs.shape[1:])}")
    out = jax.jit(jax.vmap(lambda x: traced.site_log_likelihoods(x)))(xs)
    return {k: _np(v) for k, v in out.items()}


def _drop_empty(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(d) if d else None


def _build(*, posterior, posterior_predictive, observed_data, constant_data, sample_stats,
           log_likelihood, coords, dims, attrs):
    """The ArviZ-version-specific part: ArviZ 0.23's ``from_dict`` (+ ``add_groups``).

    ``constant_data`` is assembled with xarray directly so that scalars stay 0-d (``from_dict``
    would give them a length-1 dim).
    """
    import arviz as az
    import xarray as xr

    groups = (posterior, posterior_predictive, observed_data, constant_data, sample_stats,
              log_likelihood or {})
    names = {n for g in groups for n in g}
    clash = sorted(names & {d for n in names for d in dims.get(n, [])})
    if clash:
        raise ValueError(f"{clash} used both as variable and as dim names; rename the dims "
                         f"with dims=... (xarray cannot hold both)")
    idata = az.from_dict(
        posterior=posterior,
        posterior_predictive=_drop_empty(posterior_predictive),
        observed_data=_drop_empty(observed_data),
        sample_stats=_drop_empty(sample_stats),
        log_likelihood=_drop_empty(log_likelihood),
        coords=coords,
        dims=dims,
    )
    for group in idata.groups():
        idata[group].attrs.update(attrs)
    if constant_data:
        data_vars, ds_coords = {}, {}
        for name, value in constant_data.items():
            vdims = list(dims.get(name, [f"{name}_dim_{i}" for i in range(value.ndim)]))
            if len(vdims) != value.ndim:
                raise ValueError(f"dims for {name!r} name {len(vdims)} dims but the value has "
                                 f"shape {value.shape}")
            data_vars[name] = (vdims, value)
            for d, n in zip(vdims, value.shape, strict=True):
                ds_coords.setdefault(d, np.asarray(coords[d]) if d in coords else np.arange(n))
        ds = xr.Dataset(data_vars, coords=ds_coords, attrs=dict(idata.posterior.attrs))
        idata.add_groups({"constant_data": ds})
    return idata
