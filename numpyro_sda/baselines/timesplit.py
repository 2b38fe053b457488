r"""Split a model's observation likelihood over time, automatically.

Sequential methods (particle filters, EnKF, Kalman) need the log-likelihood as a sum of per-time
terms, :math:`\log p(y \mid x_{1:L}) = c + \sum_{t} \ell_t(x_{t-K+1:t})`, while the user writes one
NumPyro model over the whole trajectory. Let :math:`f(x) \in \mathbb{R}^n` be the flattened
element-wise log-likelihoods of all observed sites (or the flattened means of Gaussian sites).
The set of times element :math:`e` depends on is

.. math:: D_e = \{ t : \partial f_e / \partial x_t \neq 0 \},

the block sparsity pattern of the Jacobian. It is computed with one forward-mode product per time
step, :math:`J\,v^{(t)}` with a tangent :math:`v^{(t)}` that is random (standard normal) on the
states at time :math:`t` and zero elsewhere, at ``num_points`` random trajectories drawn from the
prior (a zero of :math:`J_{e,t} v^{(t)}` at every point for a true dependence has probability zero;
a non-finite product counts as a dependence). The forward products are batched in chunks over
time so that memory stays bounded for long windows.

Element :math:`e` is then assigned to its LAST time :math:`t_e = \max D_e`; elements with
:math:`D_e = \emptyset` form the constant :math:`c`. The lag :math:`K = \max_e (\max D_e - \min
D_e + 1)` is 1 for Markov observation models (every element sees one time step, e.g.
``x[::8, :1]``, ``x[:, ::2] ** 2``); :math:`K > 1` (e.g. ``x[1:] - x[:-1]``) is supported by the
particle filter, which then carries the last :math:`K` states of each particle.

At time :math:`t` the per-time term is evaluated on a surrogate trajectory whose states at times
:math:`t-K+1, \dots, t` are the particle's (for :math:`K = 1`: every state is :math:`x_t`, a
broadcast), and only the elements with :math:`t_e = t` are gathered and summed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from numpyro_sda.markov import MarkovPrior
from numpyro_sda.observation import elementwise_log_prob, normal_view
from numpyro_sda.tracing import TracedModel

__all__ = [
    "TimeSplit",
    "dependence_times",
    "split_over_time",
    "flat_log_likelihood",
    "gaussian_sites",
    "surrogate_trajectory",
    "check_baseline_model",
    "posterior_predictive",
]


def check_baseline_model(traced: TracedModel, method: str) -> MarkovPrior:
    """The model's prior must be a :class:`MarkovPrior` and the trajectory its only latent site."""
    prior = traced.prior
    if not isinstance(prior, MarkovPrior):
        raise TypeError(
            f"{method} needs a Markov prior: site {traced.prior_name!r} has a "
            f"{type(prior).__name__}, whose transition is not Markov/known; pass "
            "system.markov_prior(length) or a numpyro_sda.MarkovPrior(initial, transition, length)"
        )
    if traced.latent:
        raise ValueError(
            f"{method} supports models whose only latent site is the trajectory "
            f"{traced.prior_name!r}; found other latent sites {traced.latent}"
        )
    return prior


def flat_log_likelihood(traced: TracedModel, x: Array) -> Array:
    """Concatenated, flattened element-wise log-likelihoods of every observed site.

    Their sum is :meth:`TracedModel.log_likelihood`; ``.to_event`` dimensions are split into
    their elements (the Gaussian, Laplace, ... log-densities are sums over them).
    """
    tr = traced.trace_given(x, None)
    return jnp.concatenate([jnp.ravel(elementwise_log_prob(tr[name])) for name in traced.observed])


def gaussian_sites(traced: TracedModel, x: Array) -> tuple[Array, Array, Array]:
    """Flattened (loc, scale, mask) over all observed sites, which must be Gaussian."""
    tr = traced.trace_given(x, None)
    parts = [normal_view(tr[name]["fn"], name, "this method", tr[name].get("mask"))
             for name in traced.observed]
    return tuple(jnp.concatenate([jnp.ravel(p[i]) for p in parts]) for i in range(3))


def _observed_flat(traced: TracedModel, x: Array) -> Array:
    fns = traced.site_distributions(x)
    out = []
    for name in traced.observed:
        fn = fns[name]
        shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
        out.append(jnp.ravel(jnp.broadcast_to(traced.observed[name], shape)))
    return jnp.concatenate(out)


def dependence_times(
    f: Callable[[Array], Array],
    points: Array,
    *,
    key: Array,
    chunk_elements: int = 2**24,
) -> tuple[np.ndarray, np.ndarray]:
    """First and last time each output element of ``f`` depends on (``-1`` where none).

    Args:
        f: a function of one trajectory ``(L, *state_shape)`` returning a flat vector ``(n,)``.
        points: trajectories ``(P, L, *state_shape)`` at which to probe the Jacobian.
        key: random key for the tangents.
        chunk_elements: bound on the size of one batch of tangents (controls memory).

    Returns:
        ``(first, last)`` integer arrays of shape ``(n,)``.
    """
    P, L = points.shape[:2]
    state_shape = points.shape[2:]
    size = int(np.prod(state_shape, dtype=int))
    n = int(jax.eval_shape(f, points[0]).shape[0])
    batch = max(1, min(L, chunk_elements // max(1, L * size + n)))
    times = jnp.arange(L)

    @jax.jit
    def probe(x0, k):
        def one(t, kk):
            v = jax.random.normal(kk, state_shape, x0.dtype)
            tangent = jnp.zeros_like(x0).at[t].set(v)
            _, jv = jax.jvp(f, (x0,), (tangent,))
            return (jv != 0) | ~jnp.isfinite(jv)

        keys = jax.random.split(k, L)
        dep = jax.lax.map(lambda a: one(*a), (times, keys), batch_size=batch)  # (L, n)
        t_col = times[:, None]
        first = jnp.min(jnp.where(dep, t_col, L), axis=0)
        last = jnp.max(jnp.where(dep, t_col, -1), axis=0)
        return first, last

    first = np.full(n, L, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    for p, k in zip(range(P), jax.random.split(key, P), strict=True):
        fi, la = probe(points[p], k)
        first = np.minimum(first, np.asarray(fi))
        last = np.maximum(last, np.asarray(la))
    first = np.where(last < 0, -1, first)
    return first, last


@dataclass(frozen=True)
class TimeSplit:
    """Where each observed element's likelihood enters a sequential method.

    Attributes:
        length: number of states :math:`L`.
        lag: :math:`K`, the number of consecutive states any one element depends on.
        first, last: first/last time of each flattened element (``-1``: depends on no state).
        index: ``(L, M)`` indices of the elements assigned to each time (padded).
        mask: ``(L, M)`` which entries of ``index`` are real.
        has_obs: ``(L,)`` whether any element is assigned to the time.
    """

    length: int
    lag: int
    first: np.ndarray
    last: np.ndarray
    index: np.ndarray
    mask: np.ndarray
    has_obs: np.ndarray

    @property
    def constant(self) -> np.ndarray:
        """Boolean mask of the elements that depend on no state."""
        return self.last < 0

    @property
    def max_per_time(self) -> int:
        return int(self.index.shape[1])

    def describe_nonmarkov(self) -> str:
        span = np.where(self.last >= 0, self.last - self.first + 1, 0)
        e = int(np.argmax(span))
        return (
            f"observed element {e} (flattened over the observed sites) depends on times "
            f"{int(self.first[e])}..{int(self.last[e])}"
        )


def split_over_time(first: np.ndarray, last: np.ndarray, length: int) -> TimeSplit:
    """Assign each element to its last time and build padded per-time index tables."""
    dependent = last >= 0
    lag = int(np.max(np.where(dependent, last - first + 1, 1), initial=1))
    counts = np.bincount(last[dependent], minlength=length)
    M = max(1, int(counts.max(initial=0)))
    index = np.zeros((length, M), dtype=np.int32)
    mask = np.zeros((length, M), dtype=bool)
    order = np.argsort(np.where(dependent, last, length), kind="stable")
    pos = 0
    for t in range(length):
        c = int(counts[t])
        index[t, :c] = order[pos: pos + c]
        mask[t, :c] = True
        pos += c
    return TimeSplit(length, lag, first, last, index, mask, counts > 0)


def probe_points(traced: TracedModel, key: Array, num_points: int = 2) -> Array:
    """Random trajectories at which dependence is probed: the prior draw made while tracing,
    perturbed independently ``num_points`` times (so that no point is special)."""
    x = traced.prior_value
    if x is None:
        x = traced.prior.sample(key)
    x = jnp.asarray(x)

    @jax.jit
    def draw(key, x):
        noise = jax.random.normal(key, (num_points, *x.shape), x.dtype)
        return x + 1e-2 * noise * (1.0 + jnp.abs(x))

    return draw(key, x)


def surrogate_trajectory(window: Array, t: Array, length: int) -> Array:
    """A full trajectory whose states ``t-K+1 .. t`` are ``window`` (``K`` states).

    For ``K = 1`` every state is ``window[0]`` (a broadcast, which XLA fuses with slicing).
    Times before ``t-K+1`` repeat the oldest state and later times the newest one: only elements
    that depend on times ``t-K+1 .. t`` are read from it.
    """
    K = window.shape[0]
    if K == 1:
        return jnp.broadcast_to(window[0], (length, *window.shape[1:]))
    pos = jnp.clip(jnp.arange(length) - t + K - 1, 0, K - 1)
    return window[pos]


def observed_flat(traced: TracedModel, x: Array) -> Array:
    """Observed values flattened in the same order as :func:`gaussian_sites`."""
    return _observed_flat(traced, x)


def posterior_predictive(traced: TracedModel, key: Array, xs: Array) -> dict[str, Array]:
    """:meth:`TracedModel.posterior_predictive` compiled as one function."""
    return jax.jit(lambda k, x: traced.posterior_predictive(k, x))(key, xs)


def gaussian_markov_split(
    traced: TracedModel, key: Array, method: str
) -> tuple[Array, Callable[[Array], Array], TimeSplit]:
    """Probe points, the observation-mean function and a one-step (Markov) time split.

    Shared by the Gaussian-observation baselines (EnKF/EnKS, Kalman), which need every observed
    element to depend on exactly one time step. Raises a ``ValueError`` naming ``method`` and
    the offending element otherwise.
    """
    points = probe_points(traced, key)

    def loc_of(x: Array) -> Array:
        return gaussian_sites(traced, x)[0]

    first, last = dependence_times(loc_of, points, key=jax.random.fold_in(key, 1))
    split = split_over_time(first, last, traced.prior.length)
    if split.lag > 1:
        raise ValueError(
            f"{method} needs every observed element to depend on one time step "
            "(a Markov observation model); " + split.describe_nonmarkov()
        )
    return points, loc_of, split
