r"""Export any inference result of this library to ArviZ: an ``xarray.DataTree`` with
ArviZ 1.x, an ``arviz.InferenceData`` with ArviZ 0.23.

This is the only module that knows ArviZ's containers: the rest of the library speaks in the
plain dictionaries of :class:`numpyro_sda.results.InferenceMethod`. Each group is built as an
``xarray.Dataset`` by a function of its own; only :func:`_container` depends on the ArviZ
version, so both versions get the same groups, dims, coordinates and attrs.

Layout of the exported object (``M`` draws of trajectories of ``L`` states):

=====================  ======================================================================
group                  contents
=====================  ======================================================================
``posterior``          every site of ``get_samples()`` (deterministic sites included) as
                       ``(chain=C, draw=M/C, time=L, *state dims)``, ``C`` being the
                       method's ``num_chains`` (1 for independent draws: SDA, EnKS,
                       resampled particles; the draws are chain-major). State dims are ``state``
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

Draws with NaN or infinite values (diverged SDA draws) are excluded from every group with a
``RuntimeWarning`` that gives their number (with several chains, the chains holding them); the
excluded draw indices are ``constant_data["excluded_draws"]`` and their number the attr
``num_excluded_draws``, so that ``az.summary`` never silently turns NaN.

The result round-trips through netCDF (``idata.to_netcdf(path)`` / ``az.from_netcdf(path)``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["group_names", "to_inference_data", "state_dims"]

# Per-time / per-method statistic names: when such a statistic's leading axis happens to equal
# the number of draws, it is still treated as a per-method trace, not as a per-draw value.
_PER_METHOD_NAMES = frozenset(
    {"ess", "log_evidence", "log_evidence_increments", "cost", "costs", "grad_norm",
     "iterations", "num_iterations", "num_steps", "resampled", "acceptance", "converged",
     "mean", "std", "filter_mean", "smoother_mean", "filter_std", "distinct_paths"}
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
    if hasattr(obj, "describe") and callable(obj.describe):  # guidance objects
        return obj.describe()
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


def arviz_major() -> int:
    """The installed ArviZ major version (0 for 0.23, 1 for the DataTree-based 1.x)."""
    import arviz

    return int(str(arviz.__version__).split(".")[0])


def group_names(idata: Any) -> set[str]:
    """The group names of an export (``InferenceData`` with ArviZ 0.23, ``DataTree`` with 1.x)."""
    groups = idata.groups
    if callable(groups):  # ArviZ 0.23 InferenceData.groups()
        return set(groups())
    return {g.strip("/") for g in groups if g.strip("/") and "/" not in g.strip("/")}


# ---------------------------------------------------------------------------------- draw handling
class _Draws:
    """Which draws are exported, and how the draw axis is split into chains."""

    def __init__(self, samples: Mapping[str, np.ndarray], num_draws: int, num_chains: int,
                 method: str) -> None:
        if num_chains < 1 or num_draws % num_chains:
            raise ValueError(f"{method}: {num_draws} draws cannot be split into num_chains="
                             f"{num_chains} chains of equal length")
        finite = np.ones(num_draws, bool)
        for v in samples.values():
            if v.ndim and v.shape[0] == num_draws and np.issubdtype(v.dtype, np.inexact):
                finite &= np.all(np.isfinite(v.reshape(num_draws, -1)), axis=1)
        per_chain = num_draws // num_chains
        if num_chains > 1:  # chains stay rectangular: drop whole chains holding a bad draw
            good_chain = finite.reshape(num_chains, per_chain).all(axis=1)
            keep = np.repeat(good_chain, per_chain)
            self.num_chains = int(good_chain.sum())
        else:
            keep = finite
            self.num_chains = 1
        self.keep = keep
        self.excluded = np.flatnonzero(~keep)
        self.num_draws = int(keep.sum())
        if self.num_draws == 0:
            raise ValueError(f"{method}: every draw contains NaN or infinite values; nothing to "
                             "export (the method diverged: see its sample_stats)")
        if self.excluded.size:
            where = (f" ({num_chains - self.num_chains} of {num_chains} chains dropped)"
                     if num_chains > 1 else "")
            warnings.warn(
                f"to_inference_data: {int((~finite).sum())} of {num_draws} {method} draws contain "
                f"NaN or infinite values; {self.excluded.size} draws are excluded from the "
                f"export{where} (their indices are constant_data['excluded_draws'])",
                RuntimeWarning, stacklevel=3,
            )
        self.total = num_draws

    def chains(self, v: np.ndarray) -> np.ndarray:
        """Kept draws of a per-draw array, shaped ``(chain, draw, ...)``."""
        v = v[self.keep]
        return v.reshape(self.num_chains, -1, *v.shape[1:])


# ---------------------------------------------------------------------------------- groups
def _dataset(values: Mapping[str, np.ndarray], dims: Mapping[str, Sequence[str]],
             coords: Mapping[str, Any], sample_dims: Sequence[str], attrs: Mapping[str, Any]):
    """One group as an ``xarray.Dataset``: variable dims are ``sample_dims`` + ``dims[name]``
    (default ``name_dim_i``); coordinates come from ``coords`` or ``0..n-1``."""
    import xarray as xr

    data_vars, ds_coords = {}, {}
    for name, value in values.items():
        vdims = list(sample_dims) + list(
            dims.get(name, [f"{name}_dim_{i}" for i in range(value.ndim - len(sample_dims))]))
        if len(vdims) != value.ndim:
            raise ValueError(f"dims for {name!r} name {len(vdims) - len(sample_dims)} dims but "
                             f"the value has shape {value.shape[len(sample_dims):]}")
        data_vars[name] = (vdims, value)
        for d, n in zip(vdims, value.shape, strict=True):
            c = np.asarray(coords[d]) if d in coords else np.arange(n)
            if c.shape != (n,):
                raise ValueError(f"coordinate {d!r} has {c.shape} entries but {name!r} has "
                                 f"{n} along it")
            ds_coords.setdefault(d, c)
    return xr.Dataset(data_vars, coords=ds_coords, attrs=dict(attrs))


def _trajectory_coords(site: str, traj_shape: tuple[int, ...], time: Any,
                       state_names: Sequence[str] | None) -> tuple[dict, list[str]]:
    """Coordinates and dims of the trajectory site ``(time, *state dims)``."""
    length = traj_shape[0]
    sdims = list(state_dims(site, len(traj_shape) - 1))
    time_c = np.arange(length) if time is None else np.asarray(time)
    if time_c.shape != (length,):
        raise ValueError(f"time must have one entry per state ({length}), got shape {time_c.shape}")
    coords: dict[str, Any] = {"time": time_c}
    for i, d in enumerate(sdims):
        coords[d] = np.arange(traj_shape[1 + i])
    if state_names is not None:
        if not sdims:
            raise ValueError("state_names given but the state is a scalar")
        names = [str(s) for s in state_names]
        if len(names) != traj_shape[1]:
            raise ValueError(f"state_names has {len(names)} entries but the state dim "
                             f"{sdims[0]!r} has size {traj_shape[1]}")
        coords[sdims[0]] = np.asarray(names)
    return coords, ["time", *sdims]


def _observation_groups(result: Any, draws: _Draws, obs_times: Any, obs_mask: Any,
                        coords: dict, dims: dict) -> tuple[dict, dict, dict]:
    """``observed_data``, ``posterior_predictive`` (per chain) and the masks (constant data)."""
    observed = {k: _np(v) for k, v in result.observations.items()}
    predictive = {k: _np(v) for k, v in result.posterior_predictive.items()}
    masks: dict[str, np.ndarray] = {}
    for name in set(observed) | set(predictive):
        shape = observed[name].shape if name in observed else predictive[name].shape[1:]
        dims[name] = _observation_dims(name, shape, _obs_times_for(obs_times, name), coords)
    for name, mask in (obs_mask or {}).items():
        if name not in observed:
            raise ValueError(f"obs_mask names site {name!r}, which is not observed; observed "
                             f"sites: {sorted(observed)}")
        m = _np(mask).astype(bool)
        if m.shape != observed[name].shape:
            raise ValueError(f"obs_mask[{name!r}] has shape {m.shape} but the observations have "
                             f"shape {observed[name].shape}")
        masks[f"{name}_mask"] = m
        dims[f"{name}_mask"] = list(dims[name])
    for name, v in predictive.items():
        if v.ndim < 1 or v.shape[0] != draws.total:
            raise ValueError(f"posterior_predictive[{name!r}] must have a leading draw axis of "
                             f"{draws.total}, got shape {v.shape}")
    return observed, {k: draws.chains(v) for k, v in predictive.items()}, masks


def _stats_groups(result: Any, draws: _Draws, traj_shape: tuple[int, ...], sdims: list[str],
                  per_method_stats: Sequence[str], dims: dict) -> tuple[dict, dict]:
    """Per-draw statistics (``sample_stats``, per chain) and per-method ones (constant data)."""
    stats: dict[str, np.ndarray] = {}
    constant: dict[str, np.ndarray] = {}
    forced = set(per_method_stats)
    length = traj_shape[0]

    def stat_dims(name: str, shape: tuple[int, ...]) -> list[str]:
        if shape == traj_shape:
            return list(sdims)
        out = [f"{name}_dim_{i}" for i in range(len(shape))]
        if shape and shape[0] == length:
            out[0] = "time"
        return out

    for name, v in result.sample_stats.items():
        v = _np(v)
        if _is_per_draw(name, v, draws.total, forced):
            name = _RENAMED_STATS.get(name, name)
            stats[name] = draws.chains(v)
            dims.setdefault(name, stat_dims(name, v.shape[1:]))
        else:
            constant[name] = v
            dims.setdefault(name, stat_dims(name, v.shape))
    return stats, constant


def _attrs(result: Any, site: str, draws: _Draws, system: Any) -> dict[str, Any]:
    settings = result.settings_dict() if hasattr(result, "settings_dict") else result.settings
    return {
        "method": str(result.method),
        "prior_site": str(site),
        "settings": json.dumps(_json_safe(settings), sort_keys=True),
        "wall_time": float(result.wall_time),
        "compile_time": float("nan") if result.compile_time is None else float(result.compile_time),
        "num_model_evals": int(result.num_model_evals),
        "num_draws": int(draws.num_draws),
        "num_chains": int(draws.num_chains),
        "num_excluded_draws": int(draws.excluded.size),
        "units": "physical" if system is not None else "model",
        "inference_library": "numpyro_sda",
        **_versions(),
    }


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
    model_args: tuple | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
):
    """Convert a finished :class:`~numpyro_sda.results.InferenceMethod` to ArviZ.

    Returns an ``xarray.DataTree`` with ArviZ >= 1 and an ``arviz.InferenceData`` with ArviZ
    0.23, with the same groups, dims and attrs (see the module docstring).

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
        log_likelihood: add the ``log_likelihood`` group (element-wise, per observed site).
        model_args, model_kwargs: the model's arguments for ``log_likelihood``; by default the
            ones ``run`` received (kept on the result).

    Raises:
        RuntimeError: ``result`` has not been run. TypeError/ValueError: malformed arguments;
        every draw non-finite.
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
    model_traj = samples[site]
    if model_traj.ndim < 2:
        raise ValueError(f"trajectory draws must have shape (draws, length, *state), got "
                         f"{model_traj.shape}")
    if system is not None:
        samples[site] = _np(system.denormalize(model_traj))
    draws = _Draws(samples, model_traj.shape[0], int(getattr(result, "num_chains", 1)),
                   str(result.method))
    traj_shape = tuple(samples[site].shape[1:])

    all_coords, traj_dims = _trajectory_coords(site, traj_shape, time, state_names)
    all_dims: dict[str, list[str]] = {site: traj_dims}
    observed, predictive, constant = _observation_groups(result, draws, obs_times, obs_mask,
                                                         all_coords, all_dims)
    stats, per_method = _stats_groups(result, draws, traj_shape, traj_dims, per_method_stats,
                                      all_dims)
    clash = sorted(set(per_method) & set(constant))
    if clash:
        raise ValueError(f"sample stat(s) {clash} clash with a mask name")
    constant.update(per_method)
    if draws.excluded.size:
        constant["excluded_draws"] = draws.excluded
        all_dims["excluded_draws"] = ["excluded_draw"]

    loglik = None
    if log_likelihood:
        args = result.model_args if model_args is None else tuple(model_args)
        kwargs = result.model_kwargs if model_kwargs is None else dict(model_kwargs)
        loglik = _pointwise_log_likelihood(result, model_traj, args, dict(kwargs))
        for name in loglik:
            if name not in all_dims and name in observed:
                all_dims[name] = _observation_dims(name, observed[name].shape,
                                                   _obs_times_for(obs_times, name), all_coords)
        loglik = {k: draws.chains(v) for k, v in loglik.items()}

    all_coords.update(dict(coords or {}))
    all_dims.update({k: list(v) for k, v in (dims or {}).items()})
    return _build(
        posterior={k: draws.chains(v) for k, v in samples.items()},
        posterior_predictive=predictive,
        observed_data=observed,
        constant_data=constant,
        sample_stats=stats,
        log_likelihood=loglik,
        coords=all_coords,
        dims=all_dims,
        attrs=_attrs(result, site, draws, system),
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


def _build(*, posterior, posterior_predictive, observed_data, constant_data, sample_stats,
           log_likelihood, coords, dims, attrs):
    """Every group as an ``xarray.Dataset`` (empty groups left out), then the container."""
    groups = (posterior, posterior_predictive, observed_data, constant_data, sample_stats,
              log_likelihood or {})
    names = {n for g in groups for n in g}
    clash = sorted(names & {d for n in names for d in dims.get(n, [])})
    if clash:
        raise ValueError(f"{clash} used both as variable and as dim names; rename the dims "
                         f"with dims=... (xarray cannot hold both)")
    per_chain = {"chain": np.arange(next(iter(posterior.values())).shape[0]),
                 "draw": np.arange(next(iter(posterior.values())).shape[1])}
    chain_coords = {**coords, **per_chain}
    sample_dims = ("chain", "draw")
    datasets = {"posterior": _dataset(posterior, dims, chain_coords, sample_dims, attrs)}
    for name, values, sdims in (
        ("posterior_predictive", posterior_predictive, sample_dims),
        ("log_likelihood", log_likelihood, sample_dims),
        ("sample_stats", sample_stats, sample_dims),
        ("observed_data", observed_data, ()),
        ("constant_data", constant_data, ()),
    ):
        if values:
            datasets[name] = _dataset(values, dims, chain_coords, sdims, attrs)
    return _container(datasets)


def _container(datasets: dict):
    """The ArviZ-version-specific part: ``xarray.DataTree`` (ArviZ >= 1) or ``InferenceData``."""
    if arviz_major() >= 1:
        import xarray as xr

        return xr.DataTree.from_dict(datasets)
    import arviz as az

    return az.InferenceData(**datasets)
