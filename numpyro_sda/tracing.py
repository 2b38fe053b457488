r"""Turn a user's NumPyro model into JAX functions of the trajectory.

Every inference method in this library takes the user's own model, e.g.::

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::8, :1], 0.05), obs=y)

and needs, as pure JAX functions of the trajectory :math:`x`, the observation log-likelihood

.. math:: \log p(y \mid x) = \sum_{\text{observed sites } s} \sum_j \log p_s(y_{s,j} \mid x)

(masked elements contribute zero, site scales multiply). :func:`trace_model` runs the model
once under :func:`numpyro.handlers.trace` to find the one trajectory-prior site (any instance of
``prior_types``), the observed sites and any other latent sites; afterwards the model is re-run
under :func:`numpyro.handlers.substitute` with the trajectory (and optional extra latent values)
fixed, which yields each observed site's distribution as a function of :math:`x` that JAX can
differentiate, vmap and jit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array

from numpyro_sda.observation import site_log_prob, trace_given

__all__ = ["TracedModel", "trace_model", "default_prior_types"]


def default_prior_types() -> tuple[type, ...]:
    """The distribution classes that mark the trajectory site of a model."""
    from numpyro_sda.markov import MarkovPrior

    types: list[type] = [MarkovPrior]
    try:
        from numpyro_sda.prior import TrajectoryPrior

        types.append(TrajectoryPrior)
    except ImportError:  # pragma: no cover - during partial builds
        pass
    return tuple(types)


def _sample_sites(tr) -> dict[str, dict]:
    return {name: site for name, site in tr.items() if site["type"] == "sample"}


@dataclass
class TracedModel:
    """What :func:`trace_model` found in a model, and JAX functions of the trajectory."""

    model: Callable
    args: tuple
    kwargs: dict
    prior_name: str
    prior: dist.Distribution
    observed: dict[str, Array]
    latent: list[str]
    imputed: list[str] = field(default_factory=list)
    latent_values: dict[str, Array] = field(default_factory=dict)
    prior_value: Array | None = None  # the prior draw made while tracing (a valid trajectory)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.prior.event_shape)

    def _check_x(self, x: Array) -> None:
        if tuple(jnp.shape(x)) != self.event_shape:
            raise ValueError(
                f"trajectory for site {self.prior_name!r} must have shape {self.event_shape}, "
                f"got {tuple(jnp.shape(x))}"
            )

    def trace_given(self, x: Array, params: dict | None = None):
        """The model's trace with the trajectory ``x`` (and ``params``) substituted."""
        self._check_x(x)
        data = {self.prior_name: x}
        if params:
            data.update(params)
        return trace_given(self.model, self.args, self.kwargs, data)

    def site_distributions(self, x: Array, params: dict | None = None) -> dict[str, Any]:
        """Each observed site's distribution given the trajectory ``x`` (one trajectory)."""
        tr = self.trace_given(x, params)
        return {name: tr[name]["fn"] for name in self.observed}

    def site_log_likelihoods(self, x: Array, params: dict | None = None) -> dict[str, Array]:
        """Element-wise :math:`\\log p_s(y_s \\mid x)` per observed site (masked entries are 0)."""
        tr = self.trace_given(x, params)
        return {name: site_log_prob(tr[name]) for name in self.observed}

    def log_likelihood(self, x: Array, params: dict | None = None) -> Array:
        """:math:`\\log p(y \\mid x)` summed over every observed site and element."""
        lls = self.site_log_likelihoods(x, params)
        if not lls:
            return jnp.zeros((), dtype=jnp.result_type(x))
        return sum(jnp.sum(v) for v in lls.values())

    def dependent_states(self, num_probes: int = 2, seed: int = 0) -> np.ndarray:
        r"""Which time steps the observation log-likelihood depends on, boolean ``(length,)``.

        The gradient of :math:`\log p(y \mid x)` is evaluated at ``num_probes`` random
        trajectories (standard normal, the scale of normalised states); a time step whose gradient
        is exactly zero at every probe does not enter the likelihood (JAX differentiates slicing
        and indexing exactly, so structural zeros are exact zeros; an accidental zero at a random
        point has probability zero).
        """
        params = self.latent_values or None
        grad = jax.jit(jax.grad(lambda x: self.log_likelihood(x, params)))
        used = np.zeros(self.event_shape[0], bool)
        for i in range(num_probes):
            x = jax.random.normal(jax.random.PRNGKey(seed + i), self.event_shape, jnp.float32)
            g = np.asarray(grad(x)).reshape(self.event_shape[0], -1)
            used |= np.any(g != 0, axis=1) | ~np.all(np.isfinite(g), axis=1)
        return used

    def public_name(self, name: str) -> str:
        """The user's name of an observed site: numpyro renames a site with ``obs_mask`` to
        ``"<name>_observed"`` (and adds ``"<name>_unobserved"``); this maps it back."""
        base = name[: -len("_observed")] if name.endswith("_observed") else None
        if base is not None and f"{base}_unobserved" in self.imputed:
            return base
        return name

    @property
    def public_observations(self) -> dict[str, Array]:
        """The observed values under the user's site names (see :meth:`public_name`)."""
        return {self.public_name(k): v for k, v in self.observed.items()}

    def posterior_predictive(
        self, key: Array, xs: Array, params: dict | None = None
    ) -> dict[str, Array]:
        """Draws of every observed site given each trajectory in ``xs`` (leading draw axis).

        ``params``, when given, maps other latent sites to arrays with the same leading axis.
        Sites split by ``obs_mask`` are returned under the user's name (``"y"``, full shape),
        as :class:`numpyro.infer.Predictive` does.
        """

        def one(k, x, p):
            tr = self.trace_given(x, p)
            keys = jax.random.split(k, max(len(self.observed), 1))
            return {
                self.public_name(name): tr[name]["fn"].sample(kk)
                for kk, name in zip(keys, self.observed, strict=False)
            }

        keys = jax.random.split(key, xs.shape[0])
        if params:
            return jax.vmap(one)(keys, xs, params)
        return jax.vmap(lambda k, x: one(k, x, None))(keys, xs)

    def deterministic_values(self, xs: Array, params: dict | None = None) -> dict[str, Array]:
        """The model's ``numpyro.deterministic`` sites evaluated at each trajectory in ``xs``.

        Returns a dict site -> array with the leading draw axis of ``xs`` (empty when the model
        has no deterministic site), as NumPyro's ``MCMC.get_samples`` / ``Predictive`` give them.
        ``params`` maps other latent sites to arrays with the same leading axis.
        """

        # numpyro's obs_mask adds a deterministic site "<name>" joining the observed and imputed
        # parts of a site: that is the observation, not a user's deterministic quantity
        split = {self.public_name(n) for n in self.observed} - set(self.observed)

        def one(x, p):
            tr = self.trace_given(x, p)
            return {n: s["value"] for n, s in tr.items()
                    if s["type"] == "deterministic" and n not in split}

        if not jax.eval_shape(one, xs[0], None if not params else
                              {k: v[0] for k, v in params.items()}):
            return {}
        return jax.jit(jax.vmap(one))(xs, params)


def trace_model(
    model: Callable,
    args: tuple = (),
    kwargs: dict | None = None,
    prior_types: tuple[type, ...] | None = None,
) -> TracedModel:
    """Trace ``model(*args, **kwargs)`` once and find its trajectory, observed and latent sites.

    Raises:
        ValueError: when the model has no site whose distribution is one of ``prior_types``, or
            more than one; when an observed value contains NaN (use ``obs_mask`` for gaps);
            when an observed value's shape differs from its distribution's shape.
    """
    kwargs = dict(kwargs or {})
    prior_types = default_prior_types() if prior_types is None else tuple(prior_types)
    tr = trace_given(model, args, kwargs, None)
    sites = _sample_sites(tr)
    prior_sites = [n for n, s in sites.items() if isinstance(s["fn"], prior_types)]
    type_names = " or ".join(t.__name__ for t in prior_types)
    for n, site in sites.items():  # a prior inside a plate is wrapped by numpyro: say so
        base = site["fn"]
        while isinstance(base, (dist.ExpandedDistribution, dist.Independent,
                                dist.MaskedDistribution)):
            base = base.base_dist
        if n not in prior_sites and isinstance(base, prior_types):
            raise ValueError(
                f"the trajectory site {n!r} is inside a plate (or expanded/masked): its "
                f"distribution has batch shape {tuple(site['fn'].batch_shape)}, but a "
                f"{type(base).__name__} describes ONE whole trajectory; take it out of the plate "
                "and ask the method for several draws (run(..., num_samples=N))"
            )
    if not prior_sites:
        raise ValueError(
            f"the model has no trajectory site: expected one numpyro.sample site whose "
            f"distribution is a {type_names}; sample sites found: {sorted(sites) or 'none'}"
        )
    if len(prior_sites) > 1:
        raise ValueError(
            f"the model has {len(prior_sites)} trajectory sites {prior_sites}; exactly one "
            f"{type_names} site is supported"
        )
    prior_name = prior_sites[0]
    if sites[prior_name]["is_observed"]:
        raise ValueError(f"the trajectory site {prior_name!r} is observed; it must be latent")

    observed: dict[str, Array] = {}
    latent: list[str] = []
    imputed: list[str] = []
    for name, site in sites.items():
        if name == prior_name:
            continue
        if site["is_observed"]:
            value = jnp.asarray(site["value"])
            fn = site["fn"]
            _check_obs_mask(name, fn, value, sites)
            expected = tuple(fn.batch_shape) + tuple(fn.event_shape)
            if tuple(value.shape) != expected:
                raise ValueError(
                    f"observed site {name!r}: observations have shape {tuple(value.shape)} "
                    f"but the model's distribution at that site has shape {expected}; they must "
                    "be equal (a value that only broadcasts is ambiguous: reshape it, e.g. "
                    f"y.reshape({expected}))"
                )
            if 0 in expected:
                raise ValueError(
                    f"observed site {name!r} has shape {expected}: it selects no element (an "
                    "empty slice of the trajectory?), so it carries no information"
                )
            if jnp.issubdtype(value.dtype, jnp.floating) and bool(jnp.any(jnp.isnan(value))):
                raise ValueError(
                    f"observed site {name!r} contains NaN at {int(jnp.sum(jnp.isnan(value)))} "
                    f"entries; mark gaps with a mask and fill them with any finite value, e.g. "
                    f"numpyro.sample({name!r}, d, obs=jnp.nan_to_num(y), obs_mask=~jnp.isnan(y))"
                )
            observed[name] = value
        elif name.endswith("_unobserved") and f"{name[: -len('_unobserved')]}_observed" in sites:
            imputed.append(name)
        else:
            latent.append(name)
    if not observed:
        raise ValueError(
            "the model has no observed site: pass the observations as keyword arguments "
            "(e.g. run(key, prior, y=y)) so that numpyro.sample(..., obs=y) sites are observed"
        )
    return TracedModel(
        model=model, args=tuple(args), kwargs=kwargs, prior_name=prior_name,
        prior=sites[prior_name]["fn"], observed=observed, latent=latent, imputed=imputed,
        latent_values={n: sites[n]["value"] for n in latent},
        prior_value=sites[prior_name]["value"],
    )


def _check_obs_mask(name: str, fn: Any, value: Array, sites: dict) -> None:
    """numpyro broadcasts ``obs_mask`` against the site's batch shape (expanding the site), so a
    mask of the wrong shape silently changes the site; refuse it with a message naming the mask."""
    base = name[: -len("_observed")] if name.endswith("_observed") else None
    if base is None or f"{base}_unobserved" not in sites:
        return
    full = tuple(fn.batch_shape) + tuple(fn.event_shape)
    if full != tuple(value.shape):
        batch = tuple(value.shape)[: value.ndim - len(fn.event_shape)]
        raise ValueError(
            f"obs_mask of site {base!r} does not fit the observations: numpyro broadcast it to "
            f"batch shape {tuple(fn.batch_shape)}, but the observed values have shape "
            f"{tuple(value.shape)}; the mask must have the site's batch shape {batch} (one flag "
            "per observation)"
        )
