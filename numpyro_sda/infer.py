r"""Score-based data assimilation on a user's NumPyro model.

Given a model with one :class:`~numpyro_sda.prior.TrajectoryPrior` site :math:`x` and observed
sites :math:`y_s`, :class:`SDA` draws posterior trajectories :math:`x \sim p(x \mid y)` by
guided predictor–corrector reverse diffusion (Rozet & Louppe, 2023, arXiv:2306.10574,
Algorithm 2): the prior's noise predictor is replaced by

.. math:: \varepsilon_y(x_t, t) = \varepsilon(x_t, t) - \sigma(t)\, \nabla_{x_t} \log p(y \mid x_t),

with the likelihood score approximated by a :class:`~numpyro_sda.guidance.Guidance`
(:class:`~numpyro_sda.guidance.MMPS` by default, :class:`~numpyro_sda.guidance.SDAGuidance`,
:class:`~numpyro_sda.guidance.DPS`). The model is traced with NumPyro effect handlers
(:mod:`numpyro_sda.tracing`, :mod:`numpyro_sda.observation`), so any observation operator,
several observed sites, ``obs_mask`` gaps and non-Gaussian families written in the model are used
as they are. The guided denoiser is kept inside the range of the prior's training data
(:func:`~numpyro_sda.guidance.bounded`), so no draw can diverge.

**Execution.** One reverse step (predictor and corrections) over a chunk of draws is one compiled
function; the observed values and every other array argument of the model are *arguments* of that
function, so a new observation set of the same shapes reuses the compiled code. Python drives the
steps: a progress bar over diffusion steps with an ETA, and Ctrl-C stops within one step, keeping
the chunks of draws that finished.

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

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh
from numpyro import handlers

from numpyro_sda import parallel
from numpyro_sda.guidance import MMPS, Guidance, SDAGuidance, bounded, resolve
from numpyro_sda.observation import ObservationModel, placeholder_prior, site_log_prob, trace_given
from numpyro_sda.prior import TrajectoryPrior
from numpyro_sda.results import InferenceMethod
from numpyro_sda.sampling import (
    SPACINGS,
    check_sampler_settings,
    check_time_grid,
    corrected_steps,
    diffusion_times,
    predictor_corrector,
    reverse_step,
)
from numpyro_sda.tracing import TracedModel, trace_model

__all__ = ["SDA", "SDASettings", "DEFAULT_GUIDANCE"]

DEFAULT_GUIDANCE = SDAGuidance(gamma=0.01)
"""The default guidance: measured best per unit of cost on the learned Lorenz-63 priors once
corrections are used (``benchmarks/sampling.py``; MMPS is the exact choice for Gaussian priors)."""


def _as_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class SDASettings:
    """The settings of :class:`SDA` (see its docstring)."""

    steps: int = 64
    corrections: int = 8
    tau: float = 0.25
    eta: float = 1.0
    spacing: str | tuple[float, ...] = "uniform"
    correct_below: float = 0.25
    guidance: Guidance = DEFAULT_GUIDANCE
    bounds: Any = "auto"
    chunk_size: int = 1024
    progress: bool = True
    predictive: bool = True
    sparse_guidance: bool = True
    gibbs_sweeps: int = 0
    slice_updates: int = 1
    gibbs_draws: int = 1
    mesh: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", _as_int(self.steps, "steps", 1))
        object.__setattr__(self, "corrections", _as_int(self.corrections, "corrections", 0))
        object.__setattr__(self, "chunk_size", _as_int(self.chunk_size, "chunk_size", 1))
        object.__setattr__(self, "gibbs_sweeps", _as_int(self.gibbs_sweeps, "gibbs_sweeps", 0))
        object.__setattr__(self, "slice_updates", _as_int(self.slice_updates, "slice_updates", 1))
        object.__setattr__(self, "gibbs_draws", _as_int(self.gibbs_draws, "gibbs_draws", 1))
        if self.gibbs_sweeps and self.gibbs_draws > self.gibbs_sweeps:
            raise ValueError(f"gibbs_draws ({self.gibbs_draws}) cannot exceed gibbs_sweeps "
                             f"({self.gibbs_sweeps})")
        check_sampler_settings(self.steps, self.corrections, self.tau)
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {self.eta}")
        if not isinstance(self.spacing, str):
            object.__setattr__(self, "spacing", check_time_grid(self.spacing, self.steps))
        elif self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS} or a grid of times, got "
                             f"{self.spacing!r}")
        if not 0.0 < self.correct_below <= 1.0:
            raise ValueError(f"correct_below must lie in (0, 1], got {self.correct_below}")
        object.__setattr__(self, "guidance", resolve(self.guidance))
        parallel.check_mesh(self.mesh)
        b = self.bounds
        if not (b is None or (isinstance(b, str) and b == "auto")):
            try:
                lo, hi = (np.asarray(v, np.float32) for v in b)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"bounds must be 'auto', None or a pair (lower, upper), got {b!r}") from err
            if not np.all(lo < hi):
                raise ValueError("bounds: every lower bound must be below its upper bound")

    def __getitem__(self, name: str) -> Any:
        """``settings["steps"]``: read access by name, as the former settings dict allowed."""
        if name not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(name)
        return getattr(self, name)


def _legacy_guidance(guidance: Any, gamma, zeta, cg_maxiter, cg_tol) -> Any:
    """Map the old per-method keywords onto a guidance object (deprecated)."""
    legacy = {k: v for k, v in dict(gamma=gamma, zeta=zeta, cg_maxiter=cg_maxiter,
                                    cg_tol=cg_tol).items() if v is not None}
    if not legacy:
        return guidance
    warnings.warn(
        f"SDA({', '.join(legacy)}=...) is deprecated: pass a guidance object, e.g. "
        "guidance=SDAGuidance(gamma=...), DPS(zeta=...) or MMPS(iterations=...)",
        DeprecationWarning, stacklevel=3)
    name = guidance if isinstance(guidance, str) else getattr(guidance, "name", None)
    allowed = {"sda": {"gamma"}, "dps": {"zeta"}, "mmps": {"cg_maxiter", "cg_tol"}}.get(name, set())
    wrong = set(legacy) - allowed
    if wrong or not isinstance(guidance, str):
        raise ValueError(f"{sorted(wrong or legacy)} do not apply to guidance {guidance!r}")
    if name == "sda":
        return SDAGuidance(gamma=float(legacy["gamma"]))
    if name == "dps":
        from numpyro_sda.guidance import DPS

        return DPS(zeta=float(legacy["zeta"]))
    return MMPS(iterations=_as_int(legacy.get("cg_maxiter", 1), "cg_maxiter", 1), solver="cg")


# ------------------------------------------------------------------------------- arguments
def _static_key(leaf: Any) -> Any:
    try:
        hash(leaf)
        return (type(leaf), leaf)
    except TypeError:
        return (type(leaf), id(leaf))


class _Arguments:
    """The model's arguments split into array leaves (inputs of the compiled code) and the rest
    (static: part of the compilation key)."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        leaves, self.treedef = jax.tree_util.tree_flatten((tuple(args), dict(kwargs)))
        self.dynamic_index = [i for i, v in enumerate(leaves)
                              if isinstance(v, (jax.Array, np.ndarray))]
        self.leaves = leaves
        self.dynamic = [jnp.asarray(leaves[i]) for i in self.dynamic_index]

    @property
    def key(self) -> tuple:
        dyn = set(self.dynamic_index)
        static = tuple(None if i in dyn else _static_key(v) for i, v in enumerate(self.leaves))
        shapes = tuple((tuple(v.shape), str(v.dtype)) for v in self.dynamic)
        return (self.treedef, static, shapes)

    def rebuild(self, dynamic: list) -> tuple[tuple, dict]:
        leaves = list(self.leaves)
        for i, v in zip(self.dynamic_index, dynamic, strict=True):
            leaves[i] = v
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _rebind(traced: TracedModel, args: tuple, kwargs: dict) -> TracedModel:
    """``traced`` with new model arguments; observed values re-read from a (traceable) trace."""
    x0 = jnp.zeros(traced.event_shape, jnp.float32)
    data = {traced.prior_name: x0, **traced.latent_values}
    tr = trace_given(traced.model, args, kwargs, data)
    observed = {name: tr[name]["value"] for name in traced.observed}
    return dataclasses.replace(traced, args=tuple(args), kwargs=dict(kwargs), observed=observed)


# ------------------------------------------------------------------------------- the method
class SDA(InferenceMethod):
    r"""Posterior trajectories of a NumPyro model by score-based data assimilation.

    Args:
        model: a NumPyro model with exactly one :class:`TrajectoryPrior` sample site and at
            least one observed site.
        steps: number of reverse-diffusion (predictor) steps :math:`S`.
        corrections: Langevin corrections :math:`C` per corrected step (see
            ``correct_below``). The defaults, 64 steps with C = 8 on the steps that end at
            t <= 0.25 (17 of 64; 200 score evaluations per draw), are the best measured
            within the CPU budget of issue 9 (600 s per 1024 draws on 2 cores) on the paper's
            Lorenz-63 protocol (8 observation sets x 128 draws, ``benchmarks/sampling.py``)
            with the shipped two-resolution prior ``pretrained.load(
            "lorenz63_multiresolution")`` composed with ``average=1``: "lo" W1 1.19x the
            particle floor, spread/skill 0.91, CRPS 0.268, 278 s; "hi" 1.49x, 1.22, 0.362,
            459 s (``benchmarks/results/sampling_cpu_multiresolution_budget_2026-12-03.txt``).
            C = 16: 1.13x / 1.45x at 426 s / 722 s; C = 32: 1.08x / 1.38x (spread/skill
            0.99 / 1.28) at 825 s / 1645 s ("hi" beside a training job). With the window-9
            network alone C = 32 is better than C = 16 ("hi" 1.55x against 1.64x); the
            former default, C = 32, gave 1.38x / 1.55x with it. Finer predictor steps matter
            more than more corrections per step (32 steps with C = 64 gave 1.48x / 1.60x with
            the window-9 network alone). Cost is proportional to
            ``steps + corrections * (corrected steps)`` evaluations of the composed score.
        tau: Langevin step size factor :math:`\tau`.
        eta: stochasticity of the predictor, 0 (deterministic DDIM) to 1 (ancestral); see
            :func:`numpyro_sda.sampling.reverse_step`.
        spacing: the time grid of the reverse steps, ``"uniform"`` in :math:`t`, ``"edm"``
            (uniform in :math:`(\sigma/\mu)^{1/7}`, more steps at low noise), or an explicit
            grid of ``steps + 1`` decreasing times from 1 to 0 (e.g.
            :func:`numpyro_sda.sampling.piecewise_times`); see
            :func:`numpyro_sda.sampling.diffusion_times`.
        correct_below: the corrections run only on the steps that end at a diffusion time
            :math:`t \le` ``correct_below`` (1: every step); the others are plain predictor
            steps. See :func:`numpyro_sda.sampling.corrected_steps`.
        guidance: a :class:`~numpyro_sda.guidance.Guidance` (``MMPS(...)``,
            ``SDAGuidance(gamma)``, ``DPS(zeta)``) or its name as a shorthand with defaults.
        bounds: the box the guided denoiser is kept in: ``"auto"`` (the range of the prior's
            training data, recorded by :func:`~numpyro_sda.train.train_score`, widened by 10%
            of its span; no box when the prior records none), ``None`` (no box), or
            ``(lower, upper)`` broadcastable to one trajectory.
        chunk_size: draws per compiled batch (memory bound); the last chunk is padded so that
            nothing recompiles.
        progress: show a progress bar over diffusion steps.
        predictive: also draw the observed sites given each posterior trajectory.
        sparse_guidance: differentiate the composed local score only through the windows that
            produce the states the likelihood depends on (exact; several times cheaper with
            sparse observations).
        gibbs_sweeps: Gibbs sweeps used to infer latent sites other than the trajectory (see
            the module docstring); 0 refuses such models.
        slice_updates: slice-sampling passes over those sites per sweep.
        gibbs_draws: the last ``gibbs_draws`` sweeps of each Gibbs chain are kept as draws, so
            ``num_samples / gibbs_draws`` chains run and are exported as that many chains
            (``num_chains``; ArviZ's ``r_hat`` and ESS then measure the Gibbs mixing).
        mesh: the devices the draws are sharded over: ``None`` (all visible devices, see
            :func:`numpyro_sda.parallel.draws_mesh`), a :class:`jax.sharding.Mesh` with a
            ``"draws"`` axis, or ``False`` (no sharding). Results equal a single-device run
            with the same key up to float tolerance.

    After :meth:`run`, :meth:`get_samples` returns ``{prior_site: (num_samples, L, *S)}``;
    ``sample_stats`` holds per draw ``log_likelihood`` (:math:`\log p(y \mid x)`),
    ``diverging`` (non-finite), ``out_of_range`` (outside the training range) and
    ``chi2`` (mean squared standardised residual of the Gaussian view of the observations).

    Example::

        def model(prior, y=None):
            x = numpyro.sample("x", prior)
            numpyro.sample("y", dist.Normal(x[::8, :1], 0.05), obs=y)

        sda = SDA(model).run(key, prior, y=y, num_samples=1024)
        xs = sda.get_samples()["x"]
    """

    method = "SDA"

    def __init__(
        self,
        model,
        steps: int = SDASettings.steps,
        corrections: int = SDASettings.corrections,
        tau: float = SDASettings.tau,
        eta: float = SDASettings.eta,
        spacing: str | Sequence[float] = SDASettings.spacing,
        correct_below: float = SDASettings.correct_below,
        guidance: Guidance | str = DEFAULT_GUIDANCE,
        bounds: Any = "auto",
        chunk_size: int = 1024,
        progress: bool = True,
        predictive: bool = True,
        gibbs_sweeps: int = 0,
        slice_updates: int = 1,
        sparse_guidance: bool = True,
        gibbs_draws: int = 1,
        mesh: Mesh | None | bool = None,
        *,
        gamma: float | None = None,
        zeta: float | None = None,
        cg_maxiter: int | None = None,
        cg_tol: float | None = None,
    ) -> None:
        guidance = _legacy_guidance(guidance, gamma, zeta, cg_maxiter, cg_tol)
        settings = SDASettings(
            steps=steps, corrections=corrections, tau=float(tau), eta=float(eta),
            spacing=spacing, correct_below=float(correct_below), guidance=guidance,
            bounds=bounds, chunk_size=chunk_size, progress=bool(progress),
            predictive=bool(predictive), sparse_guidance=bool(sparse_guidance),
            gibbs_sweeps=gibbs_sweeps, slice_updates=slice_updates, gibbs_draws=gibbs_draws,
            mesh=mesh,
        )
        super().__init__(model, settings)
        self.observed_states: np.ndarray | None = None  # set by run(): states y depends on
        self.interrupted = False
        self._cache: dict = {}

    # ------------------------------------------------------------------------------------
    def trace(self, *model_args: Any, **model_kwargs: Any) -> TracedModel:
        """Trace the model (no sampling) and check that SDA supports it."""
        traced = self._trace(model_args, model_kwargs)
        self._check_model(traced)
        return traced

    # ------------------------------------------------------------------ driver hooks
    def _trace(self, model_args: tuple, model_kwargs: dict) -> TracedModel:
        from numpyro_sda.tracing import default_prior_types

        model = handlers.substitute(self.model,
                                    substitute_fn=placeholder_prior(default_prior_types()))
        try:
            return trace_model(model, model_args, model_kwargs)
        except (ValueError, TypeError) as err:
            shapes = {k: tuple(jnp.shape(v)) for k, v in model_kwargs.items()
                      if hasattr(v, "shape")}
            raise type(err)(
                f"{err}\n(while tracing the model with keyword-array shapes {shapes})"
            ) from err

    def _check_model(self, traced: TracedModel) -> None:
        if not isinstance(traced.prior, TrajectoryPrior):
            raise ValueError(
                f"SDA needs a TrajectoryPrior at the trajectory site {traced.prior_name!r}, got "
                f"{type(traced.prior).__name__}; models with a MarkovPrior are for the "
                "baselines (numpyro_sda.baselines)"
            )
        if traced.latent and self.config.gibbs_sweeps == 0:
            raise ValueError(
                f"the model has latent sites other than the trajectory {traced.prior_name!r}: "
                f"{traced.latent}. Infer them with SDA(..., gibbs_sweeps=K) (Gibbs sampling: "
                "SDA for the trajectory, slice sampling for continuous sites), or fix them, e.g. "
                f"numpyro.handlers.condition(model, data={{{traced.latent[0]!r}: value}})"
            )

    def _mesh(self) -> Mesh | None:
        return parallel.resolve_mesh(self.config.mesh)

    def box(self, prior: TrajectoryPrior) -> tuple[Array, Array] | None:
        """The box of the guided denoiser (see ``bounds``), or ``None``."""
        b = self.config.bounds
        if b is None:
            return None
        if isinstance(b, str):
            rng = getattr(prior.score, "data_range", None) if prior.score is not None else None
            if rng is None:
                return None
            lo, hi = (np.asarray(v, np.float32) for v in rng)
            margin = 0.1 * (hi - lo)
            lo, hi = lo - margin, hi + margin
            extra = (1,) * (len(prior.state_shape) - 1)  # channel-first fields
            lo, hi = lo.reshape(lo.shape + extra), hi.reshape(hi.shape + extra)
        else:
            lo, hi = (np.asarray(v, np.float32) for v in b)
        return jnp.asarray(lo), jnp.asarray(hi)

    def _guided(self, traced: TracedModel, obs: ObservationModel, grad_states, params=None):
        prior: TrajectoryPrior = traced.prior
        eps_y = self.config.guidance(prior.eps_for_guidance(grad_states), prior.sde, obs, params)
        box = self.box(prior)
        if box is not None:
            eps_y = bounded(eps_y, prior.sde, *box)
        return eps_y

    def _build(self, traced: TracedModel, arguments: _Arguments, chunk: int) -> dict:
        """Compile (once per model structure, argument shapes and chunk size) the step and the
        per-draw diagnostics; cached."""
        key = (id(self.model), arguments.key, chunk, id(self._mesh()))
        if key in self._cache:
            return self._cache[key]
        s = self.config
        prior: TrajectoryPrior = traced.prior
        obs0 = ObservationModel(traced)  # checks every site once, with concrete values
        grad_states = traced.dependent_states() if s.sparse_guidance else None
        shape = prior.event_shape

        def observation_model(dynamic):
            args, kwargs = arguments.rebuild(dynamic)
            rebound = _rebind(traced, args, kwargs)
            return rebound, obs0.rebind(rebound)

        def step(xs, t, u, keys, dynamic, corrections=s.corrections):
            _, obs = observation_model(dynamic)
            eps_y = self._guided(traced, obs, grad_states)
            return jax.vmap(lambda k, x: reverse_step(k, x, t, u, eps_y, prior.sde,
                                                      corrections, s.tau, s.eta))(keys, xs)

        box = self.box(prior)

        def diagnostics(xs, dynamic, params):
            rebound, obs = observation_model(dynamic)

            def one(x, p):
                ll = rebound.log_likelihood(x, p)
                pred = obs.predict(x, p)
                num, den = 0.0, 0.0
                for site in obs.sites:
                    mean, noise, w = pred[site.name]
                    r = obs.y[site.name] - mean
                    if site.kind == "diag":
                        num = num + jnp.sum(w * r**2 / noise)
                        den = den + jnp.sum(w > 0)
                    else:
                        z = jnp.linalg.solve(noise, r[..., None])[..., 0]
                        num = num + jnp.sum(w * jnp.sum(r * z, -1))
                        den = den + jnp.sum(w > 0) * site.shape[-1]
                chi2 = num / jnp.maximum(den, 1)
                if box is None:
                    out = jnp.zeros((), bool)
                else:
                    lo, hi = box
                    out = jnp.any((x < lo) | (x > hi))
                return ll, chi2, out

            if params:
                return jax.vmap(one)(xs, params)
            return jax.vmap(lambda x: one(x, None))(xs)

        t0 = time.perf_counter()
        keep = s.gibbs_draws if traced.latent else 1
        xs0 = jax.ShapeDtypeStruct((chunk * keep, *shape), jnp.float32)
        keys0 = jax.random.split(jax.random.key(0), chunk)
        scalar = jax.ShapeDtypeStruct((), jnp.float32)
        dyn0 = arguments.dynamic
        built = {"obs": obs0, "grad_states": grad_states}
        mesh = self._mesh()
        ds = parallel.draws_sharding(mesh) if mesh is not None else None
        rep = parallel.replicated(mesh) if mesh is not None else None
        if traced.latent:
            gibbs = _Gibbs(traced, obs0, s, self, grad_states)

            def chains(keys, dynamic):  # (chains * keep) draws, chain-major
                _, obs = observation_model(dynamic)
                xs, params = jax.vmap(lambda k: gibbs.chain(k, obs))(keys)
                flat = lambda a: a.reshape((-1, *a.shape[2:]))  # noqa: E731
                return flat(xs), jax.tree_util.tree_map(flat, params)

            built["chains"] = jax.jit(chains, in_shardings=(ds, rep),
                                      out_shardings=ds).lower(keys0, dyn0).compile()
            params0 = jax.eval_shape(lambda k: gibbs.chain(k[0], obs0)[1], keys0)
            params0 = {k: jax.ShapeDtypeStruct((chunk * keep, *v.shape[1:]), v.dtype)
                       for k, v in params0.items()}
        else:
            corrected = corrected_steps(s.steps, s.correct_below, prior.sde, s.spacing)
            variants = {s.corrections} | ({0} if not corrected.all() else set())
            compiled = {c: jax.jit(
                functools.partial(step, corrections=c), in_shardings=(ds, rep, rep, ds, rep),
                out_shardings=ds,
            ).lower(xs0, scalar, scalar, keys0, dyn0).compile() for c in variants}
            built["steps"] = [compiled[s.corrections if ok else 0] for ok in corrected]
            params0 = {}
        built["diagnostics"] = jax.jit(
            diagnostics, in_shardings=(ds, rep, ds), out_shardings=ds,
        ).lower(xs0, dyn0, params0).compile()
        built["compile_time"] = time.perf_counter() - t0
        self._cache = {key: built}  # keep only the latest
        return built

    @property
    def config(self) -> SDASettings:
        """The typed settings (``self.settings``)."""
        return self.settings

    def settings_dict(self) -> dict[str, Any]:
        """The settings as plain values (the guidance by its description, a mesh by its axes)."""
        out = super().settings_dict()
        out["guidance"] = self.config.guidance.describe()
        bounds = out["bounds"]
        if not (bounds is None or isinstance(bounds, str)):
            out["bounds"] = [np.asarray(b, np.float64).tolist() for b in bounds]
        return out

    def run(self, rng_key: Array, *model_args: Any, num_samples: int | None = None,
            **model_kwargs: Any) -> SDA:
        """Draw ``num_samples`` posterior trajectories (see :class:`InferenceMethod.run`).

        Ctrl-C stops within one diffusion step: the finished chunks are kept (with a warning)
        when there are any, otherwise ``KeyboardInterrupt`` propagates.
        """
        self.num_chains = 1  # set by _prepare (Gibbs chains); reset before the driver's checks
        return super().run(rng_key, *model_args, num_samples=num_samples, **model_kwargs)

    def _prepare(self, traced: TracedModel, rng_key: Array, num_samples: int) -> dict:
        s = self.config
        mesh = self._mesh()
        keep = s.gibbs_draws if traced.latent else 1
        if num_samples % keep:
            raise ValueError(f"num_samples ({num_samples}) must be a multiple of gibbs_draws "
                             f"({keep}): each Gibbs chain contributes its last {keep} sweeps")
        self.num_chains = num_samples // keep if keep > 1 else 1
        units = num_samples // keep  # draws, or Gibbs chains
        chunk = min(s.chunk_size, units)
        if mesh is not None:  # a multiple of the number of devices (padding draws are dropped)
            chunk = parallel.padded_size(chunk, mesh)
        arguments = _Arguments(traced.args, traced.kwargs)
        built = self._build(traced, arguments, chunk)
        self.observed_states = built["grad_states"]
        dyn = arguments.dynamic
        if mesh is not None:
            dyn = jax.device_put(dyn, parallel.replicated(mesh))
        return dict(built=built, chunk=chunk, mesh=mesh, dyn=dyn, traced=traced, keep=keep)

    def _draw(self, state: dict, rng_key: Array, num_samples: int) -> tuple[dict, dict]:
        """Chunks of draws, one compiled reverse step at a time (progress, Ctrl-C)."""
        s = self.config
        built, chunk, mesh, dyn, traced = (state[k] for k in ("built", "chunk", "mesh", "dyn",
                                                              "traced"))
        prior: TrajectoryPrior = traced.prior
        if not jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key):  # raw uint32 key
            rng_key = jax.random.wrap_key_data(rng_key)
        keep = state["keep"]
        num_chunks = math.ceil(num_samples // keep / chunk)
        keys = jax.random.split(rng_key, num_chunks * chunk).reshape(num_chunks, chunk)
        times = np.asarray(diffusion_times(s.steps, sde=prior.sde, spacing=s.spacing))
        box = self.box(prior)
        draws = None if mesh is None else parallel.draws_sharding(mesh)
        bar = None
        if s.progress:
            from tqdm.auto import tqdm

            total = num_chunks * (1 if traced.latent else s.steps)
            bar = tqdm(total=total, desc="SDA", unit="chunk" if traced.latent else "step",
                       leave=False)
        xs_all, par_all, diag_all = [], [], []
        self.interrupted = False
        try:
            for c in range(num_chunks):
                if traced.latent:
                    kc = keys[c] if draws is None else jax.device_put(keys[c], draws)
                    xs, params = built["chains"](kc, dyn)
                    parallel.block_interruptibly(xs)
                    if bar is not None:
                        bar.update(1)
                else:
                    draw_keys = jax.vmap(lambda k: jax.random.split(k, s.steps + 1))(keys[c])
                    xs = jax.vmap(lambda k: jax.random.normal(k, prior.event_shape))(
                        draw_keys[:, 0])
                    if draws is not None:
                        xs, draw_keys = jax.device_put((xs, draw_keys), draws)
                    for i in range(s.steps):
                        xs = built["steps"][i](xs, times[i], times[i + 1], draw_keys[:, i + 1],
                                               dyn)
                        parallel.block_interruptibly(xs)  # Ctrl-C is seen within one step
                        if bar is not None:
                            bar.update(1)
                    params = {}
                if box is not None:  # the last step adds noise of order sigma(0) = eta_sde
                    xs = jnp.clip(xs, *box)
                diag_all.append(built["diagnostics"](xs, dyn, params))
                xs_all.append(xs)
                par_all.append(params)
        except KeyboardInterrupt:
            if not xs_all:
                raise
            self.interrupted = True
            warnings.warn(
                f"SDA interrupted: keeping the {min(num_samples, len(xs_all) * chunk * keep)} "
                f"draws of "
                f"the {len(xs_all)} finished chunks of {num_chunks}", RuntimeWarning,
                stacklevel=3)
        finally:
            if bar is not None:
                bar.close()
        n = min(num_samples, len(xs_all) * chunk * keep)
        xs = jnp.concatenate(xs_all)[:n]
        params = {k: jnp.concatenate([p[k] for p in par_all])[:n] for k in par_all[0]}
        ll, chi2, out = (jnp.concatenate([d[i] for d in diag_all])[:n] for i in range(3))
        diverging = ~jnp.all(jnp.isfinite(xs.reshape(n, -1)), axis=1)
        stats = {"log_likelihood": ll, "diverging": diverging, "out_of_range": out,
                 "chi2": chi2}
        return {traced.prior_name: xs, **params}, stats

    def _finish(self, state: dict, samples: dict, sample_stats: dict) -> None:
        n = int(sample_stats["diverging"].shape[0])
        self._warn(n, sample_stats["diverging"], sample_stats["out_of_range"],
                   sample_stats["chi2"])

    def _num_model_evals(self, state: dict, num_samples: int) -> int:
        s = self.config
        sweeps = max(s.gibbs_sweeps, 1) if state["traced"].latent else 1
        corrected = int(corrected_steps(s.steps, s.correct_below, state["traced"].prior.sde,
                                        s.spacing).sum())
        return num_samples * (s.steps + s.corrections * corrected) * sweeps

    def _posterior_predictive(self, traced: TracedModel, rng_key: Array, samples: dict) -> dict:
        if not self.config.predictive:
            return {}
        return super()._posterior_predictive(traced, rng_key, samples)

    def _warn(self, n: int, diverging: Array, out: Array, chi2: Array) -> None:
        if bool(jnp.any(diverging)):
            warnings.warn(
                f"SDA: {int(jnp.sum(diverging))} of {n} draws are not finite "
                "(sample_stats['diverging']); pass bounds='auto' with a prior that records its "
                "training range, or explicit bounds=(lower, upper)", RuntimeWarning, stacklevel=3)
        if bool(jnp.any(out)):
            warnings.warn(
                f"SDA: {int(jnp.sum(out))} of {n} draws leave the range of the prior's training "
                "data (sample_stats['out_of_range']): the observations may be inconsistent with "
                "the prior (outliers, wrong units or normalisation)", RuntimeWarning, stacklevel=3)
        med = float(jnp.median(jnp.where(jnp.isfinite(chi2), chi2, jnp.inf)))
        if med > 9.0:
            warnings.warn(
                f"SDA: the draws do not fit the observations: the median mean squared "
                f"standardised residual is {med:.3g} (about 1 expected; sample_stats['chi2']). "
                "The likelihood is too sharp for the sampler (e.g. a tiny observation noise) or "
                "the observations lie outside what the prior can produce; increase steps, use "
                "MMPS guidance, or check the observation model", RuntimeWarning, stacklevel=3)


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

    def __init__(self, traced: TracedModel, obs: ObservationModel, settings: SDASettings,
                 sda: SDA, grad_states: Any) -> None:
        from numpyro.distributions import biject_to

        self.traced, self.s, self.sda, self.grad_states = traced, settings, sda, grad_states
        x0 = jnp.zeros(traced.event_shape, jnp.float32)
        tr = trace_given(traced.model, traced.args, traced.kwargs, {traced.prior_name: x0})
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

    def log_density(self, traced: TracedModel, x: Array, u: Array) -> Array:
        """log p(theta) + log p(y | x, theta) + log |d theta / d u| (trajectory fixed)."""
        params, logdet = self.constrain(u)
        tr = trace_given(traced.model, traced.args, traced.kwargs,
                         {traced.prior_name: x, **params})
        total = logdet
        for name in (*self.names, *traced.observed):
            total = total + jnp.sum(site_log_prob(tr[name]))
        return jnp.where(jnp.isfinite(total), total, -jnp.inf)

    def chain(self, key: Array, obs: ObservationModel) -> tuple[Array, dict]:
        s, prior = self.s, self.traced.prior
        traced = obs.traced

        def sweep(carry, k):
            x, u = carry
            kx, ku = jax.random.split(k)
            params, _ = self.constrain(u)
            eps_y = self.sda._guided(traced, obs, self.grad_states, params)
            x = predictor_corrector(kx, eps_y, prior.event_shape, prior.sde, s.steps,
                                    s.corrections, s.tau, eta=s.eta, spacing=s.spacing,
                                    correct_below=s.correct_below)

            def update(u, kk):
                keys = jax.random.split(kk, u.size)
                for i in range(u.size):
                    u = _slice_coordinate(keys[i], u, i,
                                          lambda v: self.log_density(traced, x, v))
                return u, None

            u, _ = jax.lax.scan(update, u, jax.random.split(ku, s.slice_updates))
            return (x, u), (x, u)

        x0 = jnp.zeros(prior.event_shape, jnp.float32)
        _, (xs, us) = jax.lax.scan(sweep, (x0, self.init),
                                   jax.random.split(key, s.gibbs_sweeps))
        keep = s.gibbs_draws
        return xs[-keep:], jax.vmap(lambda u: self.constrain(u)[0])(us[-keep:])
