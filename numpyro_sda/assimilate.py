"""Assimilate a user's observations with a saved prior (``numpyro-sda assimilate``).

The observations are one array in an HDF5 (``.h5``/``.hdf5``) or netCDF (``.nc``) file. A small
JSON or TOML configuration describes the observation model that produced them::

    variable = "y"          # the observed array in the file (default "y")
    length = 65             # states of the trajectory to infer (required)
    every = 4               # observe every 4th state from the first (default 1), or:
    # times = [0, 8, 16]    # explicit observed state indices
    select = "0"            # numpy index applied to each observed state ("" = the whole state),
                            # e.g. "0" (first component), ":, ::4" (every 4th grid point)
    operator = "identity"   # identity | tanh | arctan | sin | square | abs | exp
    scale = 1.0             # the operator is applied to scale * x
    noise = 0.1             # Gaussian observation noise std
    units = "normalized"    # or "physical": x is denormalised with the prior's statistics first
    samples = 64            # posterior draws

so that ``y = operator(scale * x[times][select]) + N(0, noise^2)``, elementwise, with ``y`` of
shape ``(len(times), *x[0][select].shape)``. The model is run by :class:`~numpyro_sda.SDA` with
its default settings (``steps`` may be overridden); the output folder receives ``sda.nc``
(ArviZ InferenceData: posterior, posterior predictive, observed data, sample stats),
``posterior.npz`` (mean and std of the trajectory, normalised units) and ``posterior.png``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

__all__ = ["assimilate", "read_config", "read_observations", "parse_index", "OPERATORS"]

OPERATORS = {
    "identity": lambda h: h,
    "tanh": jnp.tanh,
    "arctan": jnp.arctan,
    "sin": jnp.sin,
    "square": jnp.square,
    "abs": jnp.abs,
    "exp": jnp.exp,
}
_KEYS = {"variable", "length", "every", "times", "select", "operator", "scale", "noise", "units",
         "samples"}


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a JSON (``.json``) or TOML (``.toml``) configuration."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"configuration {path} not found")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from err
    else:
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); TOML files need a .toml "
                             "suffix") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a table of settings, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - _KEYS)
    if unknown:
        raise ValueError(f"unknown configuration keys {unknown} in {path}; known: {sorted(_KEYS)}")
    if "length" not in cfg:
        raise ValueError(f"{path} must give 'length' (states of the trajectory to infer)")
    op = cfg.get("operator", "identity")
    if op not in OPERATORS:
        raise ValueError(f"unknown operator {op!r} in {path}; expected one of {sorted(OPERATORS)}")
    if cfg.get("units", "normalized") not in ("normalized", "physical"):
        raise ValueError(f"units must be 'normalized' or 'physical', got {cfg['units']!r}")
    if "every" in cfg and "times" in cfg:
        raise ValueError(f"{path} gives both 'every' and 'times'; give one")
    noise = cfg.get("noise", 0.1)
    if not (isinstance(noise, int | float) and noise > 0):
        raise ValueError(f"noise must be a positive number, got {noise!r}")
    return cfg


def parse_index(text: str) -> tuple:
    """Parse a numpy-style index such as ``"0"``, ``":, ::4"`` or ``"..., 3"`` (no evaluation)."""
    text = text.strip()
    if not text:
        return ()
    parts = []
    for raw in text.split(","):
        item = raw.strip()
        if item == "...":
            parts.append(Ellipsis)
        elif ":" in item:
            bits = item.split(":")
            if len(bits) > 3:
                raise ValueError(f"bad slice {item!r} in select {text!r}")
            try:
                parts.append(slice(*(int(b) if b.strip() else None for b in bits)))
            except ValueError as err:
                raise ValueError(f"bad slice {item!r} in select {text!r}") from err
        else:
            try:
                parts.append(int(item))
            except ValueError as err:
                raise ValueError(f"bad index {item!r} in select {text!r}") from err
    return tuple(parts)


def read_observations(path: str | os.PathLike, variable: str = "y") -> np.ndarray:
    """Read the array ``variable`` from an HDF5 or netCDF file (float32)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"observation file {path} not found")
    if path.suffix in (".nc", ".nc4", ".netcdf"):
        import xarray as xr

        with xr.open_dataset(path) as ds:
            if variable not in ds:
                raise KeyError(f"{path} has no variable {variable!r}; it holds {list(ds)}")
            y = np.asarray(ds[variable].values, np.float32)
    else:
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise ValueError(f"{path} is not an HDF5 file ({err})") from err
        with f:
            if variable not in f:
                raise KeyError(f"{path} has no dataset {variable!r}; it holds {list(f)}")
            y = np.asarray(f[variable][...], np.float32)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{path}:{variable} holds {int((~np.isfinite(y)).sum())} NaN/inf values")
    return y


def _load_score(prior: str | os.PathLike):
    from numpyro_sda import pretrained
    from numpyro_sda.checkpoint import load_score

    if isinstance(prior, str) and prior.startswith("pretrained:"):
        return pretrained.load(prior.split(":", 1)[1])
    if not Path(prior).is_file():
        raise FileNotFoundError(f"prior file {prior} not found")
    return load_score(prior)


def make_model(cfg: dict[str, Any], score):
    """The NumPyro observation model described by ``cfg`` (see the module docstring)."""
    length = int(cfg["length"])
    times = (np.asarray(cfg["times"], int) if "times" in cfg
             else np.arange(0, length, int(cfg.get("every", 1))))
    if times.size == 0 or times.min() < 0 or times.max() >= length:
        raise ValueError(f"observed times must lie in [0, {length}), got {times.tolist()}")
    select = parse_index(str(cfg.get("select", "")))
    op = OPERATORS[cfg.get("operator", "identity")]
    scale = float(cfg.get("scale", 1.0))
    noise = float(cfg.get("noise", 0.1))
    physical = cfg.get("units", "normalized") == "physical"
    if physical and score.normalization is None:
        raise ValueError("units = 'physical' needs a prior that records its normalisation")
    mean, std = score.normalization if physical else (0.0, 1.0)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        xp = x * std + mean if physical else x
        h = op(scale * xp[times][(slice(None), *select)])
        numpyro.sample("y", dist.Normal(h, noise).to_event(h.ndim), obs=y)

    return model, times


def assimilate(
    prior: str | os.PathLike,
    observations: str | os.PathLike,
    config: str | os.PathLike | dict,
    *,
    out: str | os.PathLike = "out/assimilate",
    num_samples: int | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run SDA with a saved prior on observations from a file; write InferenceData and figures.

    Returns:
        ``{"result": SDA, "files": [paths written], "times": observed state indices}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from numpyro_sda.arviz_export import to_inference_data
    from numpyro_sda.infer import SDA
    from numpyro_sda.prior import TrajectoryPrior

    cfg = dict(config) if isinstance(config, dict) else read_config(config)
    score = _load_score(prior)
    if any(s is None for s in score.state_shape):
        raise ValueError(f"the prior's state shape {score.state_shape} is not fixed; save it "
                         "with size=...")
    y = read_observations(observations, cfg.get("variable", "y"))
    model, times = make_model(cfg, score)
    length = int(cfg["length"])
    probe = jnp.zeros((length, *score.state_shape))
    with numpyro.handlers.seed(rng_seed=0), numpyro.handlers.trace() as tr:
        numpyro.handlers.substitute(model, data={"x": probe})(
            TrajectoryPrior(score, length=length))
    want = tuple(tr["y"]["fn"].shape())
    if tuple(y.shape) != want:
        raise ValueError(f"the observations have shape {tuple(y.shape)}, but the configuration's "
                         f"operator gives {want} (times {times.tolist()}, select "
                         f"{cfg.get('select', '')!r})")
    samples = int(num_samples or cfg.get("samples", 64))
    kwargs = {} if steps is None else {"steps": int(steps)}
    sda = SDA(model, progress=False, **kwargs).run(
        jax.random.PRNGKey(seed), TrajectoryPrior(score, length=length), y=jnp.asarray(y),
        num_samples=samples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    to_inference_data(sda, obs_times={"y": times}).to_netcdf(str(out / "sda.nc"))
    files.append(out / "sda.nc")
    xs = np.asarray(sda.get_samples()["x"])
    np.savez(out / "posterior.npz", mean=xs.mean(0), std=xs.std(0), times=times)
    files.append(out / "posterior.npz")
    fig = _figure(xs)
    fig.savefig(out / "posterior.png", dpi=100)
    plt.close(fig)
    files.append(out / "posterior.png")
    return {"result": sda, "files": files, "times": times}


def _figure(xs: np.ndarray):
    import matplotlib.pyplot as plt

    mean, std = xs.mean(0), xs.std(0)
    if mean.ndim == 2:  # vector states (L, D)
        fig, axes = plt.subplots(mean.shape[1], 1, figsize=(7, 1.8 * mean.shape[1]),
                                 sharex=True, squeeze=False)
        t = np.arange(mean.shape[0])
        for i, ax in enumerate(axes[:, 0]):
            ax.plot(t, mean[:, i], color="C0")
            ax.fill_between(t, mean[:, i] - 2 * std[:, i], mean[:, i] + 2 * std[:, i],
                            color="C0", alpha=0.3)
            ax.set_ylabel(f"x[{i}]")
        axes[-1, 0].set_xlabel("state")
        fig.suptitle("posterior mean and ±2 std (normalised)")
        return fig
    m, s = mean.reshape(mean.shape[0], -1), std.reshape(std.shape[0], -1)
    if mean.ndim == 4:  # 2-D fields: show the last state
        m, s = mean[-1, 0], std[-1, 0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].imshow(m, aspect="auto", origin="lower", cmap="RdBu_r")
    axes[0].set_title("posterior mean")
    axes[1].imshow(s, aspect="auto", origin="lower", cmap="viridis")
    axes[1].set_title("posterior std")
    fig.tight_layout()
    return fig
