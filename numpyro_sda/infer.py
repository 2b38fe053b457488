r"""Score-based data assimilation on a user's NumPyro model.

Given a model with one :class:`~numpyro_sda.prior.TrajectoryPrior` site :math:`x` and observed
sites :math:`y_s`, :class:`SDA` draws posterior trajectories :math:`x \sim p(x \mid y)` by
guided predictor–corrector reverse diffusion (Rozet & Louppe, 2023, arXiv:2306.10574,
Algorithm 2): the prior's noise predictor is replaced by

.. math:: \varepsilon_y(x_t, t) = \varepsilon(x_t, t) - \sigma(t)\, \nabla_{x_t} \log p(y \mid x_t),

with the likelihood score approximated as described in :mod:`numpyro_sda.guidance` (``"sda"``,
``"dps"`` or ``"mmps"``). The model is traced with NumPyro effect handlers
(:mod:`numpyro_sda.tracing`), so any observation operator, several observed sites, ``obs_mask``
gaps and non-Gaussian families written in the model are used as they are. The whole reverse
diffusion is one jitted :func:`jax.lax.scan`, vmapped over draws and run in chunks of
``chunk_size`` draws (compiled once; the last chunk is padded).

**Other latent sites** :math:`\theta` (e.g. an unknown observation noise scale with its own
prior) are inferred with ``gibbs_sweeps > 0`` by Gibbs sampling, each draw being one chain:
alternately :math:`x \sim p(x \mid y, \theta)` by one guided reverse diffusion and
:math:`\theta \sim p(\theta \mid x, y) \propto p(\theta)\, p(y \mid x, \theta)` by
coordinate-wise slice sampling (Neal, 2003, "Slice sampling", stepping out and shrinkage) on the
unconstrained space of :math:`\theta` (``biject_to`` of each site's support, with its Jacobian).
The :math:`x`-update is the SDA approximation of the conditional, so the chain targets the
SDA posterior; the state after the last sweep is returned. Discrete latent sites are not
supported. With ``gibbs_sweeps=0`` (default) a model with other latent sites raises an error
that names them (or fix them with :func:`numpyro.handlers.condition`).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from numpyro import handlers

from numpyro_sda.guidance import GUIDANCES, ObservationModel, guided_eps
from numpyro_sda.prior import TrajectoryPrior
from numpyro_sda.results import InferenceMethod
from numpyro_sda.sampling import predictor_corrector
from numpyro_sda.tracing import TracedModel, trace_model

__all__ = ["SDA"]


def _placeholder_prior(msg: dict) -> Array | None:
    """Stand in zeros for TrajectoryPrior draws while tracing (only shapes are needed)."""
    fn = msg.get("fn")
    if msg.get("type") == "sample" and isinstance(fn, TrajectoryPrior) and msg.get("value") is None:
        return jnp.zeros(fn.shape(), jnp.float32)
    return None


class SDA(InferenceMethod):
    r"""Posterior trajectories of a NumPyro model by score-based data assimilation.

    Args:
        model: a NumPyro model with exactly one :class:`TrajectoryPrior` sample site and at
            least one observed site.
        steps: number of reverse-diffusion (predictor) steps :math:`S`.
        corrections: Langevin corrections :math:`C` per step.
        tau: Langevin step size factor :math:`\tau`.
        guidance: ``"sda"`` (variance inflation), ``"dps"`` or ``"mmps"`` (Tweedie covariance
            with conjugate gradient); see :mod:`numpyro_sda.guidance`.
        gamma: the ``"sda"`` inflation :math:`\gamma`.
        zeta: the ``"dps"`` step size :math:`\zeta`.
        cg_maxiter, cg_tol: conjugate-gradient iterations and tolerance of ``"mmps"``.
        chunk_size: draws per compiled batch (memory bound); ``num_samples`` is split in
            chunks of this size, the last one padded so that nothing recompiles.
        progress: show a tqdm bar over chunks.
        predictive: also draw the observed sites given each posterior trajectory.
        sparse_guidance: differentiate the composed local score only through the windows that
            produce the states the likelihood depends on (found by
            :meth:`~numpyro_sda.tracing.TracedModel.dependent_states`). Exact, and with sparse
            observations several times cheaper per step; it has no effect on analytic scores.
        gibbs_sweeps: Gibbs sweeps used to infer latent sites other than the trajectory (see
            the module docstring); 0 refuses such models.
        slice_updates: slice-sampling passes over those sites per sweep.

    After :meth:`run`, :meth:`get_samples` returns ``{prior_site: (num_samples, L, *S)}``;
    ``sample_stats["log_likelihood"]`` holds :math:`\log p(y \mid x)` of every draw and
    ``posterior_predictive`` the re-simulated observed sites.

    Example::

        def model(prior, y=None):
            x = numpyro.sample("x", prior)
            numpyro.sample("y", dist.Normal(x[::8, :1], 0.05), obs=y)

        sda = SDA(model, steps=256, corrections=1).run(key, prior, y=y, num_samples=1024)
        xs = sda.get_samples()["x"]
    """

    method = "SDA"

    def __init__(
        self,
        model,
        steps: int = 256,
        corrections: int = 1,
        tau: float = 0.25,
        guidance: str = "sda",
        gamma: float = 3e-2,
        zeta: float = 1.0,
        cg_maxiter: int = 8,
        cg_tol: float = 1e-6,
        chunk_size: int = 1024,
        progress: bool = True,
        predictive: bool = True,
        gibbs_sweeps: int = 0,
        slice_updates: int = 1,
        sparse_guidance: bool = True,
    ) -> None:
        if guidance not in GUIDANCES:
            raise ValueError(f"unknown guidance {guidance!r}; expected one of {GUIDANCES}")
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if int(corrections) < 0:
            raise ValueError(f"corrections must be >= 0, got {corrections}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if int(cg_maxiter) < 1:
            raise ValueError(f"cg_maxiter must be >= 1, got {cg_maxiter}")
        if int(gibbs_sweeps) < 0 or int(slice_updates) < 1:
            raise ValueError("gibbs_sweeps must be >= 0 and slice_updates >= 1")
        super().__init__(
            model, steps=int(steps), corrections=int(corrections), tau=float(tau),
            guidance=guidance, gamma=float(gamma), zeta=float(zeta), cg_maxiter=int(cg_maxiter),
            cg_tol=float(cg_tol), chunk_size=int(chunk_size), progress=bool(progress),
            predictive=bool(predictive), gibbs_sweeps=int(gibbs_sweeps),
            slice_updates=int(slice_updates), sparse_guidance=bool(sparse_guidance),
        )
        self.observed_states: np.ndarray | None = None  # set by run(): states y depends on
        self.traced: TracedModel | None = None
        self._cache: tuple | None = None

    # ------------------------------------------------------------------------------------
    def trace(self, *model_args: Any, **model_kwargs: Any) -> TracedModel:
        """Trace the model (no sampling) and check that SDA supports it."""
        model = handlers.substitute(self.model, substitute_fn=_placeholder_prior)
        try:
            traced = trace_model(model, model_args, model_kwargs)
        except (ValueError, TypeError) as err:
            shapes = {k: tuple(jnp.shape(v)) for k, v in model_kwargs.items()
                      if hasattr(v, "shape")}
            raise type(err)(
                f"{err}\n(while tracing the model with keyword-array shapes {shapes})"
            ) from err
        if not isinstance(traced.prior, TrajectoryPrior):
            raise ValueError(
                f"SDA needs a TrajectoryPrior at the trajectory site {traced.prior_name!r}, got "
                f"{type(traced.prior).__name__}; models with a MarkovPrior are for the "
                "baselines (numpyro_sda.baselines)"
            )
        if traced.latent and self.settings["gibbs_sweeps"] == 0:
            raise ValueError(
                f"the model has latent sites other than the trajectory {traced.prior_name!r}: "
                f"{traced.latent}. Infer them with SDA(..., gibbs_sweeps=K) (Gibbs sampling: "
                "SDA for the trajectory, slice sampling for continuous sites), or fix them, e.g. "
                f"numpyro.handlers.condition(model, data={{{traced.latent[0]!r}: value}})"
            )
        return traced

    def _sampler(self, traced: TracedModel, chunk: int, key_args: tuple):
        cache_key = (chunk, *key_args)
        if self._cache is not None:
            k, v = self._cache
            if len(k) == len(cache_key) and all(a is b for a, b in zip(k, cache_key, strict=True)):
                return v
        s = self.settings
        prior: TrajectoryPrior = traced.prior
        obs = ObservationModel(traced)
        # differentiate only the windows that produce observed states (exact; see
        # LocalScore.eps_fn): the guidance's backward pass shrinks with the observed fraction
        grad_states = traced.dependent_states() if s["sparse_guidance"] else None
        self.observed_states = grad_states
        eps_y = guided_eps(
            prior.eps_for_guidance(grad_states), prior.sde, obs, s["guidance"], gamma=s["gamma"], zeta=s["zeta"],
            cg_maxiter=s["cg_maxiter"], cg_tol=s["cg_tol"],
        )
        shape = prior.event_shape

        def one(key: Array) -> Array:
            return predictor_corrector(
                key, eps_y, shape, prior.sde, s["steps"], s["corrections"], s["tau"]
            )

        if traced.latent:
            gibbs = _Gibbs(traced, obs, s)

            def batch(keys: Array) -> tuple[Array, Array, dict]:
                xs, params = jax.vmap(gibbs.chain)(keys)
                ll = jax.vmap(traced.log_likelihood)(xs, params)
                return xs, ll, params
        else:

            def batch(keys: Array) -> tuple[Array, Array, dict]:
                xs = jax.vmap(one)(keys)
                ll = jax.vmap(traced.log_likelihood)(xs)
                return xs, ll, {}

        t0 = time.perf_counter()
        keys = jax.random.split(jax.random.key(0), chunk)
        compiled = jax.jit(batch).lower(keys).compile()
        compile_time = time.perf_counter() - t0
        self._cache = (cache_key, (compiled, compile_time, obs))  # keep only the latest
        return compiled, compile_time, obs

    def run(
        self, rng_key: Array, *model_args: Any, num_samples: int = 1024, **model_kwargs: Any
    ) -> SDA:
        """Draw ``num_samples`` posterior trajectories of ``model(*model_args, **model_kwargs)``.

        Returns ``self``; the draws are in :meth:`get_samples` under the model's site names.
        """
        num_samples = int(num_samples)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        traced = self.trace(*model_args, **model_kwargs)
        self.traced = traced
        s = self.settings
        chunk = min(s["chunk_size"], num_samples)
        key_args = (
            self.model, *model_args, *sorted(model_kwargs), *[
                model_kwargs[k] for k in sorted(model_kwargs)
            ],
        )
        compiled, compile_time, _ = self._sampler(traced, chunk, key_args)
        self.compile_time = compile_time

        rng_key = jnp.asarray(rng_key)
        if not jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
            rng_key = jax.random.wrap_key_data(rng_key)
        key_sample, key_pred = jax.random.split(rng_key)
        num_chunks = math.ceil(num_samples / chunk)
        keys = jax.random.split(key_sample, num_chunks * chunk).reshape(num_chunks, chunk)
        iterator = range(num_chunks)
        if s["progress"] and num_chunks > 1:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="SDA", unit="chunk")
        xs_all, ll_all, par_all = [], [], []
        t0 = time.perf_counter()
        for i in iterator:
            xs, ll, params = compiled(keys[i])
            xs_all.append(xs)
            ll_all.append(ll)
            par_all.append(params)
        xs = jnp.concatenate(xs_all)[:num_samples]
        ll = jnp.concatenate(ll_all)[:num_samples]
        params = {k: jnp.concatenate([p[k] for p in par_all])[:num_samples]
                  for k in par_all[0]}
        xs.block_until_ready()
        self.wall_time = time.perf_counter() - t0

        self.prior_site = traced.prior_name
        self.observations = dict(traced.observed)
        self._samples = {traced.prior_name: xs, **params}
        diverging = ~jnp.all(jnp.isfinite(xs.reshape(num_samples, -1)), axis=1)
        self.sample_stats = {"log_likelihood": ll, "diverging": diverging}
        if bool(jnp.any(diverging)):
            warnings.warn(
                f"SDA: {int(jnp.sum(diverging))} of {num_samples} draws are not finite "
                "(sample_stats['diverging']); the guidance is too strong for the step size: "
                "increase steps, or use guidance='mmps' (or a larger gamma for 'sda')",
                RuntimeWarning, stacklevel=2,
            )
        sweeps = max(s["gibbs_sweeps"], 1) if traced.latent else 1
        self.num_model_evals = num_samples * s["steps"] * (1 + s["corrections"]) * sweeps
        self.posterior_predictive = (
            traced.posterior_predictive(key_pred, xs, params or None) if s["predictive"] else {}
        )
        return self


def _slice_coordinate(key: Array, u: Array, i: Array, logp, width: float = 1.0,
                      max_out: int = 8, max_shrink: int = 32) -> Array:
    """One univariate slice-sampling update of coordinate ``i`` of ``u`` (Neal, 2003)."""
    k_level, k_pos, k_shrink = jax.random.split(key, 3)
    lp0 = logp(u)
    level = lp0 - jax.random.exponential(k_level, dtype=u.dtype)
    x0 = u[i]
    left = x0 - width * jax.random.uniform(k_pos, dtype=u.dtype)
    right = left + width

    def at(v):
        return logp(u.at[i].set(v))

    left, _ = jax.lax.while_loop(lambda c: (c[1] < max_out) & (at(c[0]) > level),
                                 lambda c: (c[0] - width, c[1] + 1), (left, 0))
    right, _ = jax.lax.while_loop(lambda c: (c[1] < max_out) & (at(c[0]) > level),
                                  lambda c: (c[0] + width, c[1] + 1), (right, 0))

    def body(c):
        lo, hi, _, k, n, _ = c
        k, sub = jax.random.split(k)
        v = jax.random.uniform(sub, minval=lo, maxval=hi, dtype=u.dtype)
        ok = at(v) > level
        lo = jnp.where(ok | (v >= x0), lo, v)
        hi = jnp.where(ok | (v < x0), hi, v)
        return lo, hi, v, k, n + 1, ok

    init = (left, right, x0, k_shrink, 0, jnp.asarray(False))
    *_, v, _, _, ok = jax.lax.while_loop(lambda c: (~c[5]) & (c[4] < max_shrink), body, init)
    return u.at[i].set(jnp.where(ok, v, x0))


class _Gibbs:
    """Gibbs chain over (trajectory, other latent sites) for one draw."""

    def __init__(self, traced: TracedModel, obs: ObservationModel, settings: dict) -> None:
        from numpyro.distributions import biject_to

        from numpyro_sda.tracing import _run_trace

        self.traced, self.obs, self.s = traced, obs, settings
        x0 = jnp.zeros(traced.event_shape, jnp.float32)
        tr = _run_trace(traced.model, traced.args, traced.kwargs, {traced.prior_name: x0})
        self.transforms, self.shapes, self.init = {}, {}, []
        for name in traced.latent:
            support = tr[name]["fn"].support
            if support.is_discrete:
                raise ValueError(
                    f"latent site {name!r} is discrete ({type(tr[name]['fn']).__name__}); SDA's "
                    "Gibbs scheme supports continuous latent sites only"
                )
            t = biject_to(support)
            self.transforms[name] = t
            value = jnp.asarray(tr[name]["value"], jnp.float32)
            self.shapes[name] = value.shape
            self.init.append(jnp.ravel(t.inv(value)))
        self.init = jnp.concatenate(self.init)
        self.names = list(traced.latent)

    def constrain(self, u: Array) -> tuple[dict, Array]:
        params, i, logdet = {}, 0, jnp.zeros((), u.dtype)
        for name in self.names:
            size = math.prod(self.shapes[name])
            ui = u[i : i + size].reshape(self.shapes[name])
            i += size
            t = self.transforms[name]
            v = t(ui)
            params[name] = v
            logdet = logdet + jnp.sum(t.log_abs_det_jacobian(ui, v))
        return params, logdet

    def log_density(self, x: Array, u: Array) -> Array:
        """log p(theta) + log p(y | x, theta) + log |d theta / d u| (trajectory fixed)."""
        from numpyro_sda.tracing import _run_trace, _site_log_prob

        params, logdet = self.constrain(u)
        tr = _run_trace(self.traced.model, self.traced.args, self.traced.kwargs,
                        {self.traced.prior_name: x, **params})
        total = logdet
        for name in (*self.names, *self.traced.observed):
            total = total + jnp.sum(_site_log_prob(tr[name]))
        return jnp.where(jnp.isfinite(total), total, -jnp.inf)

    def chain(self, key: Array) -> tuple[Array, dict]:
        s, prior = self.s, self.traced.prior

        def sweep(carry, k):
            x, u = carry
            kx, ku = jax.random.split(k)
            params, _ = self.constrain(u)
            eps_y = guided_eps(
                prior.eps, prior.sde, self.obs, s["guidance"], gamma=s["gamma"],
                zeta=s["zeta"], cg_maxiter=s["cg_maxiter"], cg_tol=s["cg_tol"], params=params,
            )
            x = predictor_corrector(kx, eps_y, prior.event_shape, prior.sde, s["steps"],
                                    s["corrections"], s["tau"])

            def update(u, kk):
                keys = jax.random.split(kk, u.size)
                for i in range(u.size):
                    u = _slice_coordinate(keys[i], u, i, lambda v: self.log_density(x, v))
                return u, None

            u, _ = jax.lax.scan(update, u, jax.random.split(ku, s["slice_updates"]))
            return (x, u), None

        x0 = jnp.zeros(prior.event_shape, jnp.float32)
        (x, u), _ = jax.lax.scan(sweep, (x0, self.init),
                                 jax.random.split(key, s["gibbs_sweeps"]))
        return x, self.constrain(u)[0]
