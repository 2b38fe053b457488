r"""The inference driver shared by SDA and every baseline, and the common shape of a result.

Following NumPyro's ``MCMC`` / kernel split (and DAPPER's ``da_method``), a method is an object
configured by its constructor (its algorithm settings, a typed frozen dataclass), and
``run(rng_key, *model_args, num_samples=..., **model_kwargs)`` performs inference and returns
``self`` so that calls chain; ``get_samples()`` returns a dict of arrays with a leading draw axis,
keyed by the model's own site names (``numpyro.deterministic`` sites included).
:mod:`numpyro_sda.arviz_export`, :mod:`numpyro_sda.metrics` and :func:`numpyro_sda.compare` read
only the fields defined here.

:class:`InferenceMethod.run` performs once, for every method, the sequence

1. check ``rng_key`` and ``num_samples`` (before anything is traced or compiled);
2. trace the model (:meth:`InferenceMethod._trace`) and check it (:meth:`InferenceMethod._check_model`);
3. ``state = _prepare(traced, key, num_samples)``: build and compile the algorithm, timed as
   ``compile_time``;
4. ``samples, sample_stats = _draw(state, key, num_samples)``: run it, timed as ``wall_time``;
5. ``_finish(state, samples, sample_stats)``: post-run checks and warnings;
6. deterministic sites and posterior-predictive draws of the observed sites;
7. keep ``model_args`` / ``model_kwargs`` on the result.

A method writes only steps 3–5 (and its settings dataclass).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh

__all__ = [
    "InferenceMethod",
    "check_choice",
    "check_int",
    "check_real",
    "check_rng_key",
]


# ---------------------------------------------------------------------------------- settings checks
def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an ``int``; a ``TypeError`` / ``ValueError`` naming ``name`` otherwise.

    Integral floats (``16384.0``) are accepted; ``2.5`` is refused rather than truncated, and so
    are booleans and non-numbers.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if isinstance(value, numbers.Integral):
        out = int(value)
    else:
        f = float(value)
        if not math.isfinite(f) or f != int(f):
            raise ValueError(f"{name} must be an integer, got {value!r} (not truncated)")
        out = int(f)
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return out


def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
    """``value`` as a finite ``float`` in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (f <= low if low_open else f < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and f > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return f


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; a ``ValueError`` naming ``name`` otherwise."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_rng_key(rng_key: Any) -> Array:
    """A single JAX PRNG key (typed ``jax.random.key(s)`` or raw ``jax.random.PRNGKey(s)``).

    Raises a ``TypeError`` naming what was passed (e.g. ``rng_key=0``) before anything is
    traced or compiled.
    """
    hint = "pass a key such as jax.random.key(0) (or jax.random.PRNGKey(0))"
    if not isinstance(rng_key, jax.Array | np.ndarray):
        raise TypeError(f"rng_key must be a JAX PRNG key, got {type(rng_key).__name__} "
                        f"{rng_key!r}: {hint}")
    if jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        if rng_key.shape != ():
            raise ValueError(f"rng_key must be ONE key, got a batch of keys of shape "
                             f"{rng_key.shape}: {hint}")
        return rng_key
    if rng_key.dtype == np.uint32 and rng_key.ndim == 1:
        return jnp.asarray(rng_key)
    raise TypeError(f"rng_key must be a JAX PRNG key, got an array of dtype {rng_key.dtype} and "
                    f"shape {rng_key.shape}: {hint}")


# ---------------------------------------------------------------------------------- the driver
class InferenceMethod:
    """Base class of SDA and of every baseline: the driver of one inference run.

    **Contract for a method** (see the module docstring for the sequence ``run`` performs):

    * ``settings``: its algorithm settings, a frozen :func:`dataclasses.dataclass` that validates
      itself in ``__post_init__`` (e.g. :class:`~numpyro_sda.baselines.particle.ParticleSettings`);
      pass it to ``super().__init__(model, settings)``.
    * ``_prepare(self, traced, rng_key, num_samples) -> state``: build and compile the algorithm
      for the traced model (:class:`~numpyro_sda.tracing.TracedModel`) and ``num_samples``
      draws; everything it does is ``compile_time``. ``state`` is any object the method wants
      back in ``_draw`` (e.g. the compiled executable and what it was built from).
    * ``_draw(self, state, rng_key, num_samples) -> (samples, sample_stats)``: run the
      algorithm; ``samples`` maps site names (the trajectory site, and any other latent site)
      to arrays with a leading draw axis of length ``num_samples``; ``sample_stats`` maps names
      to per-draw arrays (leading axis ``num_samples``) or per-method traces/scalars. This is
      ``wall_time`` (the driver blocks until the arrays are ready). A chunked sampler loops
      over compiled chunks here.
    * optional ``_finish(self, state, samples, sample_stats)``: post-run checks, warnings and
      extra result attributes (not timed);
    * optional ``_check_model(self, traced)``: method-specific model checks (after tracing,
      before ``_prepare``); ``_trace(self, model_args, model_kwargs)`` to trace differently;
    * optional ``_num_model_evals(self, state, num_samples) -> int``;
    * ``default_num_samples(self, traced) -> int``: the number of draws when ``run`` is not
      given ``num_samples`` (``_min_num_samples`` is the smallest accepted, 1 by default);
    * ``num_chains`` (attribute, default 1): the draws are ordered chain-major, ``num_samples //
      num_chains`` per chain; :func:`~numpyro_sda.to_inference_data` exports them as that many
      chains (e.g. several Gibbs chains, so that ``r_hat`` is defined).

    Attributes set by :meth:`run`:
        prior_site: name of the trajectory site in the user's model.
        observations: observed values by site name.
        posterior_predictive: draws of the observed sites given each returned trajectory.
        sample_stats: per-draw arrays (leading draw axis) or per-method traces.
        wall_time: seconds spent running the algorithm (compilation excluded).
        compile_time: seconds spent building and compiling it.
        num_model_evals: number of network or transition-function evaluations.
        model_args, model_kwargs: the model arguments ``run`` received (observations included).

    Subclasses that override :meth:`run` themselves (the legacy protocol: ``super().__init__(
    model, **settings)`` with the settings kept as a plain dict) remain supported until they
    are ported onto the hooks.
    """

    method: str = "method"
    num_chains: int = 1
    _min_num_samples: int = 1

    def __init__(self, model: Callable, settings: Any = None, /, **legacy_settings: Any) -> None:
        if not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
        if settings is not None and legacy_settings:
            raise TypeError("pass either a settings dataclass or keyword settings, not both")
        if settings is not None and not dataclasses.is_dataclass(settings):
            raise TypeError(f"settings must be a dataclass instance, got {type(settings).__name__}")
        self.model = model
        self.settings: Any = settings if settings is not None else dict(legacy_settings)
        self._samples: dict[str, Array] | None = None
        self._num_samples_default: int | None = None  # deprecated constructor num_samples
        self.prior_site: str | None = None
        self.observations: dict[str, Array] = {}
        self.posterior_predictive: dict[str, Array] = {}
        self.sample_stats: dict[str, Array] = {}
        self.wall_time: float = float("nan")
        self.compile_time: float | None = None
        self.num_model_evals: int = 0
        self.model_args: tuple = ()
        self.model_kwargs: dict[str, Any] = {}
        self.traced: Any = None

    # ------------------------------------------------------------------ deprecated arguments
    def _deprecated_num_samples(self, num_samples: Any) -> None:
        """Accept the old constructor keyword ``num_samples=`` with a ``DeprecationWarning``."""
        if num_samples is None:
            return
        warnings.warn(
            f"{type(self).__name__}(..., num_samples=...) is deprecated: pass num_samples to "
            f"run(key, *args, num_samples=..., **kwargs), as for every method",
            DeprecationWarning, stacklevel=3,
        )
        self._num_samples_default = check_int("num_samples", num_samples, self._min_num_samples)

    # ------------------------------------------------------------------ hooks
    def default_num_samples(self, traced: Any) -> int:
        """Number of draws when ``run`` is not given ``num_samples``."""
        return 1024

    def _trace(self, model_args: tuple, model_kwargs: dict) -> Any:
        from numpyro_sda.tracing import trace_model

        return trace_model(self.model, model_args, model_kwargs)

    def _check_model(self, traced: Any) -> None:
        """Method-specific checks of the traced model (raise a clear error)."""

    def _prepare(self, traced: Any, rng_key: Array, num_samples: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement _prepare and _draw "
                                  "(or override run)")

    def _draw(self, state: Any, rng_key: Array, num_samples: int) -> tuple[dict, dict]:
        raise NotImplementedError(f"{type(self).__name__} must implement _prepare and _draw "
                                  "(or override run)")

    def _finish(self, state: Any, samples: dict, sample_stats: dict) -> None:
        """Post-run checks, warnings and extra attributes (not timed)."""

    def _num_model_evals(self, state: Any, num_samples: int) -> int:
        return 0

    def _posterior_predictive(self, traced: Any, rng_key: Array, samples: dict) -> dict:
        xs = samples[traced.prior_name]
        params = {k: v for k, v in samples.items() if k in traced.latent} or None
        return jax.jit(lambda k, x, p: traced.posterior_predictive(k, x, p))(rng_key, xs, params)

    # ------------------------------------------------------------------ the driver
    def run(self, rng_key: Array, *model_args: Any, num_samples: int | None = None,
            **model_kwargs: Any) -> InferenceMethod:
        """Run inference on ``model(*model_args, **model_kwargs)`` and return ``self``.

        Args:
            rng_key: a JAX PRNG key.
            model_args, model_kwargs: the model's arguments (the prior and the observations).
            num_samples: number of posterior draws (default: :meth:`default_num_samples`).
        """
        key = check_rng_key(rng_key)
        if num_samples is not None:
            num_samples = check_int("num_samples", num_samples, self._min_num_samples)
        if num_samples is not None and num_samples % self.num_chains:
            raise ValueError(f"num_samples ({num_samples}) must be a multiple of num_chains "
                             f"({self.num_chains})")
        traced = self._trace(model_args, model_kwargs)
        self._check_model(traced)
        if num_samples is None:
            num_samples = (self._num_samples_default if self._num_samples_default is not None
                           else self.default_num_samples(traced))
        k_prepare, k_draw, k_predict = jax.random.split(key, 3)
        self.traced = traced

        t0 = time.perf_counter()
        state = self._prepare(traced, k_prepare, num_samples)
        compile_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        samples, stats = self._draw(state, k_draw, num_samples)
        samples, stats = jax.block_until_ready((dict(samples), dict(stats)))
        wall_time = time.perf_counter() - t0
        self._finish(state, samples, stats)

        site = traced.prior_name
        params = {k: v for k, v in samples.items() if k in traced.latent} or None
        deterministic = traced.deterministic_values(samples[site], params)
        self.prior_site = site
        self.observations = traced.public_observations
        self._samples = {**samples, **deterministic}
        self.sample_stats = stats
        self.compile_time, self.wall_time = compile_time, wall_time
        self.num_model_evals = int(self._num_model_evals(state, num_samples))
        self.model_args, self.model_kwargs = tuple(traced.args), dict(traced.kwargs)
        self.posterior_predictive = self._posterior_predictive(traced, k_predict, samples)
        return self

    # ------------------------------------------------------------------ results
    def get_samples(self) -> dict[str, Array]:
        """Posterior draws by site name, each with a leading draw axis."""
        if self._samples is None:
            raise RuntimeError(f"{type(self).__name__}.run(...) has not been called yet")
        return dict(self._samples)

    @property
    def num_draws(self) -> int:
        samples = self.get_samples()
        return int(samples[self.prior_site].shape[0])

    def settings_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for export and display); a device mesh is shown by
        its axes (``"Mesh({'draws': 4})"``)."""
        if dataclasses.is_dataclass(self.settings):
            out = {f.name: getattr(self.settings, f.name)
                   for f in dataclasses.fields(self.settings)}
        else:
            out = dict(self.settings)
        return {k: f"Mesh({dict(v.shape)})" if isinstance(v, Mesh) else v
                for k, v in out.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings_dict().items())
        return f"{type(self).__name__}({args})"
