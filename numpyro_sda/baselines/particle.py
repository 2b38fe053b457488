r"""Bootstrap particle filter and smoothers on a user's NumPyro model.

For a Markov prior :math:`p(x_0) \prod_t p(x_t \mid x_{t-1})` and an observation likelihood split
over time (:mod:`numpyro_sda.baselines.timesplit`), the bootstrap filter (Gordon, Salmond & Smith,
1993) propagates particles with the transition, :math:`x_t^i \sim p(x_t \mid x_{t-1}^{a_t^i})`,
and weights them by the per-time likelihood,

.. math:: \tilde w_t^i = W_{t-1}^i\, p(y_t \mid x_t^i), \qquad
          \log \hat p(y_{0:t}) = \log \hat p(y_{0:t-1}) + \log \textstyle\sum_i \tilde w_t^i,

resampling (systematic or multinomial) the ancestors :math:`a_t` only when the effective sample
size :math:`1 / \sum_i (W_{t-1}^i)^2` falls below ``ess_threshold * N`` (Doucet & Johansen,
2009). Smoothed trajectories are drawn either by **ancestral tracing** — pick :math:`i` with
probability :math:`W_L^i` and follow :math:`a_t` back (Kitagawa, 1996; the ground truth of Rozet
& Louppe, 2023) — or by **FFBSi** backward simulation (Godsill, Doucet & West, 2004):

.. math:: P(x_t = x_t^i \mid x_{t+1}) \propto W_t^i\, p(x_{t+1} \mid x_t^i).

Memory: the scan stores only the states ``(L, N, *state_shape)``, the ancestor indices
``(L, N)`` and the log-weights ``(L, N)``; trajectories are assembled by tracing indices back, never
by copying paths. For Lorenz-96 with 32 variables, 16384 particles and 1000 steps this is
2.1 GB + 2 x 64 MB (float32/int32), which fits in the 23 GiB of this machine. The per-time
likelihood is evaluated in particle chunks (``chunk_elements``) so that the surrogate
trajectories never exceed that many floats at once.

Path degeneracy: ancestral tracing returns ``num_samples`` draws that may share a few ancestors
at early times (after many resamplings all paths coalesce). The number of distinct particles
the draws pass through at each time is recorded in ``sample_stats["distinct_paths"]`` and a
warning is raised when it falls below ``path_warning * num_samples``. FFBSi does not coalesce;
``smoother="auto"`` (the default) uses it whenever its cost,
``num_samples x num_particles x (length - 1)`` transition densities, is at most
``ffbsi_budget`` (default :math:`2^{32}`) and the observation model is Markov (lag 1), and
ancestral tracing otherwise.

Several devices (``mesh=``, as for :class:`numpyro_sda.SDA`: ``None`` = every visible device,
``False`` = one, or a :class:`jax.sharding.Mesh` with a ``"draws"`` axis): the particle axis
is split over the devices of the ``"draws"`` axis inside the one jitted program
(:class:`numpyro_sda.parallel.EnsembleSharding`), so each device propagates and weighs its own
:math:`N / D` particles (transitions, likelihood chunks, jitter) and holds its share of the
stored ``(L, N, *state)`` history. The ``(N,)`` bookkeeping -- log-likelihoods, normalised
weights, ESS, the resample-or-not decision, the ancestor indices -- is replicated (an
all-gather of :math:`N` floats per step), so it is computed from the same values in the same
order as on one device and the discrete choices (which particles survive) cannot be flipped by
a different summation order; the resampled particles are then gathered by GSPMD. The smoothing
draws are split over the same devices (padded to a multiple of :math:`D` by repeating the last
draw, which changes no count, and trimmed back); FFBSi replicates the particles of one time step to every device
so that each device evaluates the :math:`N` transition densities of its own draws. Random
numbers are generated inside the program with ``jax_threefry_partitionable`` (JAX's default),
so they do not depend on the sharding. When :math:`D` does not divide :math:`N`, the particles
are split over :math:`\gcd(N, D)` devices (with a warning; one device when the two are
coprime). The result equals the ``mesh=False`` run with the same key to float rounding: the
weighted filtering means and the regularisation covariance are sums over devices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import logsumexp
from jax.sharding import Mesh

from numpyro_sda import parallel
from numpyro_sda.baselines.timesplit import (
    TimeSplit,
    check_baseline_model,
    dependence_times,
    flat_log_likelihood,
    posterior_predictive,
    probe_points,
    split_over_time,
    surrogate_trajectory,
)
from numpyro_sda.results import (
    InferenceMethod,
    check_choice,
    check_int,
    check_real,
)
from numpyro_sda.tracing import TracedModel

__all__ = [
    "ParticleSettings",
    "ParticleSmoother",
    "ancestral_paths",
    "distinct_count",
    "ffbsi_paths",
    "resample_multinomial",
    "resample_systematic",
]


def resample_systematic(key: Array, log_weights: Array, num: int) -> Array:
    """Systematic resampling: ``num`` indices with one shared uniform offset (sorted output)."""
    w = jnp.exp(log_weights - logsumexp(log_weights))
    cdf = jnp.cumsum(w)
    u = (jax.random.uniform(key, (), cdf.dtype) + jnp.arange(num, dtype=cdf.dtype)) / num
    idx = jnp.searchsorted(cdf, u * cdf[-1])
    return jnp.clip(idx, 0, log_weights.shape[0] - 1).astype(jnp.int32)


def resample_multinomial(key: Array, log_weights: Array, num: int) -> Array:
    """Multinomial resampling by inverse-CDF of sorted uniforms (O(N log N), no N x N table)."""
    w = jnp.exp(log_weights - logsumexp(log_weights))
    cdf = jnp.cumsum(w)
    u = jnp.sort(jax.random.uniform(key, (num,), cdf.dtype))
    idx = jnp.searchsorted(cdf, u * cdf[-1])
    return jnp.clip(idx, 0, log_weights.shape[0] - 1).astype(jnp.int32)


_RESAMPLERS = {"systematic": resample_systematic, "multinomial": resample_multinomial}
_SMOOTHERS = ("auto", "ancestral", "ffbsi")


@dataclass(frozen=True)
class ParticleSettings:
    """Settings of :class:`ParticleSmoother` (validated on construction; see its docstring)."""

    num_particles: int = 16384
    resampling: str = "systematic"
    ess_threshold: float = 0.5
    smoother: str = "auto"
    regularization: float = 0.0
    ess_warning: float = 1e-3
    path_warning: float = 0.1
    ffbsi_budget: int = 2**32
    max_lag: int = 8
    chunk_elements: int = 2**24
    mesh: Any = None

    def __post_init__(self) -> None:
        f = object.__setattr__
        f(self, "num_particles", check_int("num_particles", self.num_particles, 2))
        check_choice("resampling", self.resampling, _RESAMPLERS)
        f(self, "ess_threshold", check_real("ess_threshold", self.ess_threshold, low=0, high=1))
        check_choice("smoother", self.smoother, _SMOOTHERS)
        f(self, "regularization", check_real("regularization", self.regularization, low=0))
        f(self, "ess_warning", check_real("ess_warning", self.ess_warning, low=0, high=1))
        f(self, "path_warning", check_real("path_warning", self.path_warning, low=0, high=1))
        f(self, "ffbsi_budget", check_int("ffbsi_budget", self.ffbsi_budget, 0))
        f(self, "max_lag", check_int("max_lag", self.max_lag, 1))
        f(self, "chunk_elements", check_int("chunk_elements", self.chunk_elements, 1))
        parallel.check_mesh(self.mesh)

    def choose_smoother(self, num_samples: int, length: int, lag: int) -> str:
        """``"ffbsi"`` or ``"ancestral"``: the explicit choice, or the ``"auto"`` rule (FFBSi when
        ``num_samples * num_particles * (length - 1) <= ffbsi_budget`` and ``lag == 1``)."""
        if self.smoother != "auto":
            return self.smoother
        cost = num_samples * self.num_particles * max(length - 1, 0)
        return "ffbsi" if lag == 1 and cost <= self.ffbsi_budget else "ancestral"


class FilterOutput(NamedTuple):
    """What the bootstrap filter stores: states, ancestors, normalised log-weights, ESS,
    resampling flags (all with a leading time axis), the log-evidence and the first time with
    non-finite weights (-1 if none)."""

    xs: Array
    ancestors: Array
    log_weights: Array
    ess: Array
    resampled: Array
    log_evidence: Array
    first_bad: Array


def distinct_count(idx: Array) -> Array:
    """Number of distinct values in an integer vector (sort and count changes; jit-friendly)."""
    s = jnp.sort(idx)
    return 1 + jnp.sum(s[1:] != s[:-1])


def _sample_transition(prior, keys: Array, xs: Array) -> Array:
    return jax.vmap(lambda k, x: prior.transition(x).sample(k))(keys, xs)


def normalise_weights(lw: Array, ll: Array) -> tuple[Array, Array, Array, Array]:
    r"""Update the log-weights with the log-likelihoods: ``(lw_new, log increment, ESS, bad)``.

    :math:`\tilde w^i = W^i p(y_t \mid x_t^i)`, increment :math:`\log \sum_i \tilde w^i`, ``bad``
    when a log-likelihood is NaN/+inf or every weight vanishes.
    """
    bad = jnp.any(jnp.isnan(ll) | (ll == jnp.inf))
    tot = lw + ll
    inc = logsumexp(tot)
    bad = bad | ~jnp.isfinite(inc)
    lw_new = tot - inc
    ess = 1.0 / jnp.sum(jnp.exp(2.0 * lw_new))
    return lw_new, inc, ess, bad


def regularised_jitter(key: Array, x: Array, lw: Array, parents: Array,
                       bandwidth: float) -> Array:
    r"""Resample ``x[parents]`` and move the duplicates by :math:`N(0, h^2 \hat\Sigma_w)`
    (regularised particle filter, Musso, Oudjane & Le Gland, 2001)."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    size = flat.shape[1]
    w = jnp.exp(lw)
    mu = w @ flat
    A = (flat - mu) * jnp.sqrt(w)[:, None] / jnp.sqrt(jnp.maximum(1.0 - w @ w, 1e-12))
    C = A.T @ A + 1e-12 * jnp.eye(size, dtype=flat.dtype)
    chol = jnp.linalg.cholesky(C)
    counts = jnp.zeros(n, jnp.int32).at[parents].add(1)
    dup = counts[parents] > 1
    z = jax.random.normal(key, (n, size), flat.dtype) @ chol.T
    new = flat[parents] + bandwidth * jnp.where(dup[:, None], z, 0.0)
    return new.reshape(x.shape)


def bootstrap_filter(
    key: Array,
    prior,
    weigh: Callable[[int, Array, Array], tuple[Array, Array, Array, Array]],
    *,
    num_particles: int,
    lag: int,
    resample: Callable[[Array, Array, int], Array],
    ess_threshold: float,
    bandwidth: float,
    members: parallel.EnsembleSharding | None = None,
) -> FilterOutput:
    """The bootstrap particle filter over the prior's ``length`` steps (one ``lax.scan``).

    ``weigh(t, windows, lw)`` returns :func:`normalise_weights` of the time-``t`` likelihood of
    the particles' last ``lag`` states ``windows`` ``(N, lag, *state)``. ``members`` (default:
    one device) splits the particle axis over devices; the ``(N,)`` weights, ancestors and
    decisions stay replicated (see the module docstring).
    """
    sh = members if members is not None else parallel.EnsembleSharding()
    N, L, K = num_particles, prior.length, lag
    always = ess_threshold >= 1.0
    thr = ess_threshold * N
    k0, key = jax.random.split(key)
    x0 = sh.split(prior.initial.sample(k0, (N,)))
    win0 = sh.split(jnp.repeat(x0[:, None], K, axis=1))
    lw0 = sh.whole(jnp.full((N,), -jnp.log(N), x0.dtype))
    lw0, inc0, ess0, bad0 = weigh(0, win0, lw0)

    def body(carry, inp):
        x, win, lw, logz, first_bad = carry
        t, k = inp
        kr, kj, kp = jax.random.split(k, 3)
        ess_prev = 1.0 / jnp.sum(jnp.exp(2.0 * lw))
        do = (ess_prev < thr) | always
        parents = sh.whole(jax.lax.cond(
            do, lambda: resample(kr, lw, N), lambda: jnp.arange(N, dtype=jnp.int32)
        ))
        if bandwidth > 0:
            xp = jax.lax.cond(do, lambda: regularised_jitter(kj, x, lw, parents, bandwidth),
                              lambda: x[parents])
        else:
            xp = x[parents]
        xp = sh.split(xp)
        lw = sh.whole(jnp.where(do, -jnp.log(N).astype(lw.dtype), lw))
        xn = sh.split(_sample_transition(prior, sh.split(jax.random.split(kp, N)), xp))
        win = sh.split(jnp.concatenate([win[parents, 1:], xn[:, None]], axis=1))
        lw, inc, ess, bad = weigh(t, win, lw)
        first_bad = jnp.where((first_bad < 0) & bad, t, first_bad)
        return (xn, win, lw, logz + inc, first_bad), (xn, parents, lw, ess, do)

    ts = jnp.arange(1, L, dtype=jnp.int32)
    init = (x0, win0, lw0, inc0, jnp.where(bad0, 0, -1).astype(jnp.int32))
    carry, (xs, anc, lws, ess, did) = jax.lax.scan(body, init, (ts, jax.random.split(key, L - 1)))
    return FilterOutput(
        xs=sh.split(jnp.concatenate([x0[None], xs]), dim=1),
        ancestors=jnp.concatenate([jnp.arange(N, dtype=jnp.int32)[None], anc]),
        log_weights=jnp.concatenate([lw0[None], lws]),
        ess=jnp.concatenate([ess0[None], ess]),
        resampled=jnp.concatenate([jnp.zeros((1,), bool), did]),
        log_evidence=carry[3],
        first_bad=carry[4],
    )


def ancestral_paths(key: Array, filt: FilterOutput, num: int,
                    members: parallel.EnsembleSharding | None = None) -> tuple[Array, Array]:
    """Ancestral tracing (Kitagawa, 1996): pick final particles by weight and follow their
    ancestors back. Returns the draws ``(num, L, *state)`` and the number of distinct particles
    they pass through at each time ``(L,)``. With ``members`` the draws are split over its
    devices (padded by repeating the last one, which changes no count, and trimmed)."""
    sh = members if members is not None else parallel.EnsembleSharding()
    idx = resample_multinomial(key, filt.log_weights[-1], num)
    idx = sh.split(parallel.pad_draws(idx, sh.padded(num)))

    def back(i, inp):
        x_t, a_t = inp
        return sh.split(a_t[i]), (sh.split(x_t[i]), distinct_count(i))

    _, (traj, distinct) = jax.lax.scan(back, idx, (filt.xs, filt.ancestors), reverse=True)
    return jnp.moveaxis(traj, 0, 1)[:num], distinct


def ffbsi_paths(key: Array, prior, filt: FilterOutput, num: int,
                members: parallel.EnsembleSharding | None = None) -> tuple[Array, Array]:
    r"""Forward-filtering backward-simulation (Godsill, Doucet & West, 2004),
    :math:`P(x_t = x_t^i \mid x_{t+1}) \propto W_t^i p(x_{t+1} \mid x_t^i)`. Returns the draws
    ``(num, L, *state)`` and the number of distinct particles picked at each time ``(L,)``.

    With ``members`` the draws are split over its devices (padded by repeating the last draw's
    key and state, which changes no count, and trimmed) and the particles of each time step are
    replicated to every device, which scores them against its own draws."""
    sh = members if members is not None else parallel.EnsembleSharding()
    xs, lws = filt.xs, filt.log_weights
    N = xs.shape[1]
    size = sh.padded(num)
    kL, key = jax.random.split(key)
    idx = resample_multinomial(kL, lws[-1], num)
    x_last = sh.split(parallel.pad_draws(sh.whole(xs[-1])[idx], size))

    def back(x_next, inp):
        x_t, lw_t, k = inp
        x_t = sh.whole(x_t)

        def logw_one(xn):
            return lw_t + jax.vmap(lambda xi: prior.transition(xi).log_prob(xn))(x_t)

        def pick(kk, xn):
            return jax.random.categorical(kk, logw_one(xn))

        keys = sh.split(parallel.pad_draws(jax.random.split(k, num), size))
        i = sh.map(lambda a: pick(*a), (keys, x_next), batch_size=max(1, min(num, 2**22 // N)))
        x_new = sh.split(x_t[i])
        return x_new, (x_new, distinct_count(i))

    keys = jax.random.split(key, xs.shape[0] - 1)
    _, (traj, distinct) = jax.lax.scan(back, x_last, (xs[:-1], lws[:-1], keys), reverse=True)
    traj = jnp.concatenate([traj, x_last[None]])
    distinct = jnp.concatenate([distinct, distinct_count(idx)[None]])
    return jnp.moveaxis(traj, 0, 1)[:num], distinct


def step_log_likelihood(traced: TracedModel, split: TimeSplit, chunk: int,
                        members: parallel.EnsembleSharding | None = None):
    """``weigh(t, windows, lw)`` for :func:`bootstrap_filter`: the time-``t`` share of the
    model's log-likelihood, evaluated in particle chunks of ``chunk`` surrogate trajectories
    (per device with ``members``; the log-likelihoods are then replicated for the weights)."""
    sh = members if members is not None else parallel.EnsembleSharding()
    L = split.length
    index, mask, has_obs = (jnp.asarray(a) for a in (split.index, split.mask, split.has_obs))

    def loglik(t, windows):
        idx, msk = index[t], mask[t]

        def one(w):
            ll = flat_log_likelihood(traced, surrogate_trajectory(w, t, L))
            return jnp.sum(jnp.where(msk, ll[idx], 0.0))

        return sh.map(one, windows, batch_size=chunk)

    def weigh(t, windows, lw):
        ll = jax.lax.cond(has_obs[t], lambda: sh.whole(loglik(t, windows)),
                          lambda: jnp.zeros_like(lw))
        return sh.whole(normalise_weights(sh.whole(lw), sh.whole(ll)))

    return weigh


class _Prepared(NamedTuple):
    compiled: Any
    traced: TracedModel
    split: TimeSplit
    const: float
    smoother: str
    length: int
    members: parallel.EnsembleSharding


class ParticleSmoother(InferenceMethod):
    r"""Bootstrap particle filter with ancestral-tracing or FFBSi smoothing.

    Args:
        model: the user's NumPyro model; its trajectory site must be a
            :class:`~numpyro_sda.MarkovPrior` (e.g. ``system.markov_prior(65, spinup=64)``).
        num_particles: number of particles :math:`N`.
        resampling: ``"systematic"`` (default) or ``"multinomial"``.
        ess_threshold: resample when ESS < ``ess_threshold * N`` (1.0: at every step; 0: never).
        smoother: ``"auto"`` (default: FFBSi where affordable, see the module docstring),
            ``"ancestral"`` (path tracing) or ``"ffbsi"`` (backward simulation, cost
            O(num_samples x N) transition densities per step).
        regularization: jitter bandwidth factor after resampling (``0`` = exact bootstrap
            filter). Resampled duplicates get Gaussian noise with covariance
            :math:`(h\,\mathrm{reg})^2 \hat\Sigma_w`, :math:`h = N^{-1/(d+4)}` (regularised PF,
            Musso, Oudjane & Le Gland, 2001); needed for deterministic dynamics.
        ess_warning: warn when the ESS falls below ``max(ess_warning * N, 2)`` at any time.
        path_warning: warn when the draws pass through fewer than ``path_warning *
            num_samples`` distinct particles at any time (path degeneracy).
        ffbsi_budget: largest ``num_samples * N * (length - 1)`` for which ``"auto"`` picks FFBSi.
        max_lag: largest number of consecutive states one observed element may depend on; the
            particles then carry their last ``lag`` states. Beyond it the model is rejected as
            not Markov (ValueError).
        chunk_elements: bound on the number of floats in one batch of surrogate trajectories
            (per device when sharded).
        mesh: the devices the particles and the smoothing draws are split over: ``None``
            (default: every visible device, :func:`numpyro_sda.parallel.draws_mesh`), ``False``
            (one device) or a :class:`jax.sharding.Mesh` with a ``"draws"`` axis. Results equal
            the ``mesh=False`` run with the same key to float rounding (module docstring).
        settings: a :class:`ParticleSettings` instead of the keywords above.
        num_samples: deprecated; pass ``num_samples`` to :meth:`run` (default ``min(N, 1024)``).

    ``sample_stats``: ``"ess"`` (L,), ``"resampled"`` (L,), ``"log_evidence"`` (),
    ``"filter_mean"`` (L, *state_shape) (weighted filtering means), ``"distinct_paths"`` (L,)
    (distinct particles the draws pass through at each time), ``"log_weight"`` per draw (all
    zero: draws are equally weighted). ``smoother_used`` is the smoother that ran,
    ``sharding`` the :class:`~numpyro_sda.parallel.EnsembleSharding` it ran with
    (``sharding.mesh``: the mesh the particles were split over, ``None`` for one device).
    """

    method = "BPF"

    def __init__(
        self,
        model,
        num_particles: int = 16384,
        *,
        resampling: str = "systematic",
        ess_threshold: float = 0.5,
        smoother: str = "auto",
        num_samples: int | None = None,
        regularization: float = 0.0,
        ess_warning: float = 1e-3,
        path_warning: float = 0.1,
        ffbsi_budget: int = 2**32,
        max_lag: int = 8,
        chunk_elements: int = 2**24,
        mesh: Mesh | None | bool = None,
        settings: ParticleSettings | None = None,
    ) -> None:
        if settings is None:
            settings = ParticleSettings(
                num_particles=num_particles, resampling=resampling, ess_threshold=ess_threshold,
                smoother=smoother, regularization=regularization, ess_warning=ess_warning,
                path_warning=path_warning, ffbsi_budget=ffbsi_budget, max_lag=max_lag,
                chunk_elements=chunk_elements, mesh=mesh,
            )
        elif not isinstance(settings, ParticleSettings):
            raise TypeError(f"settings must be a ParticleSettings, got {type(settings).__name__}")
        super().__init__(model, settings)
        self._deprecated_num_samples(num_samples)
        self.split: TimeSplit | None = None
        self.smoother_used: str | None = None
        self.sharding: parallel.EnsembleSharding | None = None
        self._compiled: Any = None

    def default_num_samples(self, traced: TracedModel) -> int:
        return min(self.settings.num_particles, 1024)

    def _check_model(self, traced: TracedModel) -> None:
        check_baseline_model(traced, type(self).__name__)

    # ------------------------------------------------------------------ building blocks
    def _time_split(self, traced: TracedModel, rng_key: Array) -> tuple[TimeSplit, float]:
        """The per-time split of the likelihood and its state-independent constant."""
        s, prior = self.settings, traced.prior
        points = probe_points(traced, rng_key)
        first, last = dependence_times(
            lambda x: flat_log_likelihood(traced, x), points, key=jax.random.fold_in(rng_key, 1),
            chunk_elements=s.chunk_elements,
        )
        split = split_over_time(first, last, prior.length)
        if split.lag > s.max_lag:
            raise ValueError(
                f"the observation model is not Markov: {split.describe_nonmarkov()}, a lag of "
                f"{split.lag} states (max_lag={s.max_lag}). Each observed element "
                "should depend on one time step (or a few consecutive ones)"
            )
        if split.lag > 1 and s.smoother == "ffbsi":
            raise ValueError(
                "the observation model is not Markov (" + split.describe_nonmarkov() + "); "
                "FFBSi needs every observed element to depend on one time step: use "
                "smoother='ancestral'"
            )
        const_mask = jnp.asarray(split.constant)
        const = float(jax.jit(
            lambda x: jnp.sum(jnp.where(const_mask, flat_log_likelihood(traced, x), 0.0))
        )(points[0]))
        return split, const

    def _build(self, traced: TracedModel, split: TimeSplit, smoother: str, num_samples: int,
               members: parallel.EnsembleSharding | None = None):
        """The jitted ``run(key) -> (draws, ess, resampled, log_evidence, first_bad,
        filter_mean, distinct_paths)``, with the particles and draws split by ``members``
        (default: one device)."""
        s, prior = self.settings, traced.prior
        sh = members if members is not None else parallel.EnsembleSharding()
        N, L = s.num_particles, prior.length
        size = int(np.prod(prior.state_shape, dtype=int))
        n_el = int(split.first.shape[0])
        chunk = max(1, min(N, s.chunk_elements // max(1, L * size + n_el)))
        weigh = step_log_likelihood(traced, split, chunk, sh)
        bandwidth = s.regularization * N ** (-1.0 / (size + 4))

        @jax.jit
        def run(key):
            kf, ks = jax.random.split(key)
            filt = bootstrap_filter(
                kf, prior, weigh, num_particles=N, lag=split.lag,
                resample=_RESAMPLERS[s.resampling], ess_threshold=s.ess_threshold,
                bandwidth=bandwidth, members=sh,
            )
            if smoother == "ancestral":
                traj, distinct = ancestral_paths(ks, filt, num_samples, sh)
            else:
                traj, distinct = ffbsi_paths(ks, prior, filt, num_samples, sh)
            filter_mean = jnp.einsum("ln,ln...->l...", jnp.exp(filt.log_weights), filt.xs)
            return (sh.split(traj), filt.ess, filt.resampled, filt.log_evidence,
                    filt.first_bad, filter_mean, distinct)

        return run

    # ------------------------------------------------------------------ driver hooks
    def _prepare(self, traced: TracedModel, rng_key: Array, num_samples: int) -> _Prepared:
        kp, kr = jax.random.split(rng_key)
        split, const = self._time_split(traced, kp)
        smoother = self.settings.choose_smoother(num_samples, traced.prior.length, split.lag)
        members = parallel.EnsembleSharding.for_ensemble(
            self.settings.mesh, self.settings.num_particles, what="particles", stacklevel=3)
        run = self._build(traced, split, smoother, num_samples, members)
        compiled = run.lower(members.place(kr)).compile()
        self.split, self.smoother_used, self.sharding = split, smoother, members
        self._compiled = compiled  # the partitioned program, for inspection (as_text())
        return _Prepared(compiled, traced, split, const, smoother, traced.prior.length, members)

    def _draw(self, state: _Prepared, rng_key: Array, num_samples: int) -> tuple[dict, dict]:
        sh = state.members
        out = sh.fetch(state.compiled(sh.place(rng_key)))
        traj, ess, did, logz, first_bad, filter_mean, distinct = out
        samples = {state.traced.prior_name: traj}
        stats = {
            "ess": ess, "resampled": did, "log_evidence": logz + state.const,
            "filter_mean": filter_mean, "distinct_paths": distinct,
            "log_weight": jnp.zeros(traj.shape[0], traj.dtype), "first_bad": first_bad,
        }
        return samples, stats

    def _finish(self, state: _Prepared, samples: dict, stats: dict) -> None:
        first_bad = int(stats.pop("first_bad"))
        if first_bad >= 0:
            raise ValueError(
                f"non-finite particle log-weights at time {first_bad}: the observation "
                "log-likelihood is NaN/+inf for some particle, or -inf for all of them (check "
                "the observation model, its noise scale and the observed values)"
            )
        N, ess = self.settings.num_particles, stats["ess"]
        floor = max(self.settings.ess_warning * N, 2.0)
        if float(jnp.min(ess)) < floor:
            warnings.warn(
                f"particle degeneracy: the effective sample size fell to {float(jnp.min(ess)):.3g}"
                f" of {N} particles (first at time {int(jnp.argmax(ess < floor))}); the ESS "
                "trace is in sample_stats['ess']. Use more particles, or a less informative "
                "likelihood / more model noise",
                RuntimeWarning, stacklevel=3,
            )
        distinct = np.asarray(stats["distinct_paths"])
        M = int(samples[state.traced.prior_name].shape[0])
        if M > 1 and distinct.min() < self.settings.path_warning * M:
            t = int(distinct.argmin())
            advice = (
                "use smoother='ffbsi' (backward simulation, cost num_samples x num_particles "
                "transition densities per step), more particles, or fewer draws"
                if state.smoother == "ancestral" else
                "use more particles (the filter's weights are degenerate)"
            )
            warnings.warn(
                f"path degeneracy: the {M} draws pass through only {int(distinct.min())} "
                f"distinct particles at time {t} (smoother={state.smoother!r}), so they are far "
                f"from {M} independent posterior draws; the counts per time are in "
                f"sample_stats['distinct_paths']. {advice[0].upper()}{advice[1:]}",
                RuntimeWarning, stacklevel=3,
            )

    def _num_model_evals(self, state: _Prepared, num_samples: int) -> int:
        N, L = self.settings.num_particles, state.length
        return N * L + (num_samples * N * (L - 1) if state.smoother == "ffbsi" else 0)

    def _posterior_predictive(self, traced: TracedModel, rng_key: Array, samples: dict) -> dict:
        return posterior_predictive(traced, rng_key, samples[traced.prior_name])
