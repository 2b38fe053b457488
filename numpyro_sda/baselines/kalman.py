r"""Exact posterior of a linear-Gaussian model: Kalman filter, RTS smoother, backward sampling.

When the prior is linear-Gaussian (:class:`~numpyro_sda.markov.LinearGaussianDynamics`:
:math:`x_0 \sim N(m_0, P_0)`, :math:`x_{t+1} = A x_t + b + w_t`, :math:`w_t \sim N(0, Q)`) and every
observed element is Gaussian with a mean affine in one state,
:math:`y_e \sim N(h_e^\top x_{t_e} + c_e, r_e^2)`, the posterior is Gaussian. The Kalman filter
(Kalman, 1960) gives :math:`p(x_t \mid y_{0:t}) = N(m_t, P_t)` and the evidence
:math:`\log p(y) = \sum_t \log N(y_t;\ H_t m_t^- + c_t,\ H_t P_t^- H_t^\top + R_t)`; the
Rauch–Tung–Striebel smoother (Särkkä, 2013, Alg. 8.2) gives the marginals
:math:`p(x_t \mid y) = N(m^s_t, P^s_t)`; exact joint draws come from backward sampling
(Frühwirth-Schnatter, 1994; Carter & Kohn, 1994):

.. math:: x_t \mid x_{t+1}, y \sim N\big(m_t + G_t (x_{t+1} - A m_t - b),\ P_t - G_t A P_t\big),
          \quad G_t = P_t A^\top (A P_t A^\top + Q)^{-1}.

The observation matrices :math:`H_t` and offsets :math:`c_t` are read off the user's model: the
Jacobian of the flattened Gaussian site means with respect to the trajectory, checked to be
constant (affine model) and to couple each element to one time step; the noise scales are
checked to be independent of the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from numpyro_sda.baselines.timesplit import (
    check_baseline_model,
    gaussian_markov_split,
    gaussian_sites,
    observed_flat,
    posterior_predictive,
)
from numpyro_sda.results import InferenceMethod
from numpyro_sda.tracing import TracedModel

__all__ = [
    "KalmanSettings",
    "KalmanSmoother",
    "LinearObservations",
    "kalman_smoother",
    "linear_observations",
]


class LinearObservations(NamedTuple):
    """Per-time padded observation model ``y_t = H_t x_t + c_t + N(0, diag(r_t^2))``.

    Padded entries (``mask`` False) have ``H = 0``, ``c = y = 0``, ``r = 1`` and no effect.
    """

    H: Array  # (L, M, d)
    c: Array  # (L, M)
    r: Array  # (L, M)
    y: Array  # (L, M)
    mask: Array  # (L, M)


def linear_observations(traced, key: Array, rtol: float = 1e-4) -> LinearObservations:
    """Extract the per-time linear-Gaussian observation model from a traced model."""
    prior = check_baseline_model(traced, "KalmanSmoother")
    L, shape = prior.length, prior.state_shape
    if len(shape) != 1:
        raise ValueError(f"KalmanSmoother needs vector states, got state shape {shape}")
    d = shape[0]
    points, loc_of, split = gaussian_markov_split(traced, key, "KalmanSmoother")
    x0 = jnp.zeros((L, d), points.dtype)

    @jax.jit
    def linearise(x0, points):
        c_all, r0, m0 = gaussian_sites(traced, x0)
        J = jax.jacfwd(loc_of)(x0).reshape(-1, L, d)
        lp, rp, _ = jax.vmap(lambda p: gaussian_sites(traced, p))(points)
        pred = c_all + jnp.einsum("eld,pld->pe", J, points)
        return c_all, r0, m0, J, lp, rp, pred

    c_all, r0, m0, J, lps, rps, preds = linearise(x0, points)
    for lp, rp, pred in zip(lps, rps, preds, strict=True):
        scale = jnp.max(jnp.abs(lp)) + 1.0
        if float(jnp.max(jnp.abs(pred - lp))) > rtol * float(scale) * 10:
            raise ValueError(
                "KalmanSmoother needs observation means that are linear (affine) in the "
                "trajectory; the model's Gaussian site means are nonlinear"
            )
        if float(jnp.max(jnp.abs(rp - r0))) > rtol * float(jnp.max(jnp.abs(r0))):
            raise ValueError(
                "KalmanSmoother needs observation noise scales that do not depend on the state"
            )
    y_all = observed_flat(traced, x0)
    idx, msk = jnp.asarray(split.index), jnp.asarray(split.mask) & m0[split.index]
    t_of = jnp.asarray(np.maximum(split.last, 0))[idx]  # (L, M)
    H = J[idx, t_of]  # (L, M, d)
    H = jnp.where(msk[..., None], H, 0.0)
    c = jnp.where(msk, c_all[idx], 0.0)
    r = jnp.where(msk, r0[idx], 1.0)
    y = jnp.where(msk, y_all[idx], 0.0)
    return LinearObservations(H, c, r, y, msk)


def kalman_smoother(dyn, obs: LinearObservations, key: Array | None = None, num_samples: int = 0):
    """Kalman filter + RTS smoother (+ backward sampling) on padded observations.

    Returns ``(mean (L, d), cov (L, d, d), log_evidence, draws (num_samples, L, d) | None)``.
    """
    A, b, Q, m0, P0 = dyn.A, dyn.b, dyn.Q, dyn.m0, dyn.P0
    dtype = jnp.result_type(obs.H.dtype, jnp.float32)
    b = jnp.zeros(jnp.shape(A)[0]) if b is None else b
    A, b, Q, m0, P0 = (jnp.asarray(v, dtype) for v in (A, b, Q, m0, P0))
    log2pi = jnp.log(2.0 * jnp.pi).astype(dtype)

    def update(m, P, H, c, r, y, msk):
        S = H @ P @ H.T + jnp.diag(r**2)
        S = 0.5 * (S + S.T)
        chol = jnp.linalg.cholesky(S)
        v = y - H @ m - c
        sol = jax.scipy.linalg.cho_solve((chol, True), v)
        K = jax.scipy.linalg.cho_solve((chol, True), H @ P).T
        m_new = m + K @ v
        P_new = P - K @ H @ P
        P_new = 0.5 * (P_new + P_new.T)
        ll = -0.5 * (v @ sol) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * log2pi * jnp.sum(msk)
        return m_new, P_new, ll

    def fstep(carry, inp):
        m, P, logz, first = carry
        H, c, r, y, msk = inp
        mp = jnp.where(first, m0, A @ m + b)
        Pp = jnp.where(first, P0, A @ P @ A.T + Q)
        mf, Pf, ll = update(mp, Pp, H, c, r, y, msk)
        return (mf, Pf, logz + ll, False), (mf, Pf)

    d = A.shape[0]
    init = (jnp.zeros(d, dtype), jnp.zeros((d, d), dtype), jnp.zeros((), dtype), True)
    (_, _, logz, _), (mf, Pf) = jax.lax.scan(fstep, init, (obs.H, obs.c, obs.r, obs.y, obs.mask))

    def gain(m, P):
        Pp = A @ P @ A.T + Q
        G = jnp.linalg.solve(Pp, A @ P).T  # P A^T Pp^{-1}
        return G, A @ m + b, Pp

    def bstep(carry, inp):
        ms, Ps = carry
        m, P = inp
        G, mp, Pp = gain(m, P)
        m_s = m + G @ (ms - mp)
        P_s = P + G @ (Ps - Pp) @ G.T
        P_s = 0.5 * (P_s + P_s.T)
        return (m_s, P_s), (m_s, P_s)

    _, (msm, Psm) = jax.lax.scan(bstep, (mf[-1], Pf[-1]), (mf[:-1], Pf[:-1]), reverse=True)
    mean = jnp.concatenate([msm, mf[-1:]])
    cov = jnp.concatenate([Psm, Pf[-1:]])
    draws = None
    if num_samples and key is not None:
        eye = jnp.eye(d, dtype=dtype)

        def one(k):
            kL, k = jax.random.split(k)
            xL = jax.random.multivariate_normal(kL, mf[-1], Pf[-1] + 1e-12 * eye)

            def bs(x_next, inp):
                m, P, kk = inp
                G, mp, _ = gain(m, P)
                mu = m + G @ (x_next - mp)
                C = P - G @ A @ P
                C = 0.5 * (C + C.T)
                x = jax.random.multivariate_normal(kk, mu, C + 1e-12 * eye * jnp.trace(C), method="eigh")
                return x, x

            keys = jax.random.split(k, mf.shape[0] - 1)
            _, xs = jax.lax.scan(bs, xL, (mf[:-1], Pf[:-1], keys), reverse=True)
            return jnp.concatenate([xs, xL[None]])

        draws = jax.vmap(one)(jax.random.split(key, num_samples))
    return mean, cov, logz, draws


@dataclass(frozen=True)
class KalmanSettings:
    """Settings of :class:`KalmanSmoother` (it has none: the posterior is exact)."""


class _Prepared(NamedTuple):
    compiled: Any
    dynamics: Any
    obs: LinearObservations
    traced: TracedModel


class KalmanSmoother(InferenceMethod):
    """Exact posterior of a linear-Gaussian model written as an ordinary NumPyro model.

    Args:
        model: the user's model; the prior site must be a ``MarkovPrior`` with ``.linear`` set
            (``LinearGaussian(...).markov_prior(L)``) and the observed sites Gaussian with means
            affine in one state each and state-independent noise (clear errors otherwise).
        num_samples: deprecated; pass ``num_samples`` to :meth:`run` (number of exact joint
            posterior draws, default 1000; 0 returns the smoothed mean as the one draw).

    After ``run``: ``mean`` (L, d), ``cov`` (L, d, d), ``std`` (L, d), ``log_evidence``;
    ``sample_stats`` has ``"mean"``, ``"std"``, ``"log_evidence"``. ``compile_time`` covers
    reading the linear observation model off the user's model and compiling the smoother.
    """

    method = "Kalman"
    _min_num_samples = 0

    def __init__(self, model, num_samples: int | None = None, *,
                 settings: KalmanSettings | None = None) -> None:
        if settings is not None and not isinstance(settings, KalmanSettings):
            raise TypeError(f"settings must be a KalmanSettings, got {type(settings).__name__}")
        super().__init__(model, KalmanSettings() if settings is None else settings)
        self._deprecated_num_samples(num_samples)

    def default_num_samples(self, traced: TracedModel) -> int:
        return 1000

    def _check_model(self, traced: TracedModel) -> None:
        prior = check_baseline_model(traced, "KalmanSmoother")
        if prior.linear is None:
            raise ValueError(
                "KalmanSmoother needs a linear-Gaussian prior: the MarkovPrior has no .linear "
                "(use LinearGaussian(...).markov_prior(length), or MarkovPrior(..., "
                "linear=LinearGaussianDynamics(A, b, Q, m0, P0)))"
            )

    def _prepare(self, traced: TracedModel, rng_key: Array, num_samples: int) -> _Prepared:
        k1, k2 = jax.random.split(rng_key)
        obs = linear_observations(traced, k1)
        fn = jax.jit(kalman_smoother, static_argnames=("num_samples",))
        compiled = fn.lower(traced.prior.linear, obs, k2, num_samples=num_samples).compile()
        return _Prepared(compiled, traced.prior.linear, obs, traced)

    def _draw(self, state: _Prepared, rng_key: Array, num_samples: int) -> tuple[dict, dict]:
        mean, cov, logz, draws = state.compiled(state.dynamics, state.obs, rng_key)
        if draws is None:
            draws = mean[None]
        std = jnp.sqrt(jnp.clip(jnp.diagonal(cov, axis1=-2, axis2=-1), 0.0))
        stats = {"mean": mean, "std": std, "log_evidence": logz, "cov": cov}
        return {state.traced.prior_name: draws}, stats

    def _finish(self, state: _Prepared, samples: dict, stats: dict) -> None:
        self.cov = stats.pop("cov")
        self.mean, self.std, self.log_evidence = stats["mean"], stats["std"], stats["log_evidence"]

    def _num_model_evals(self, state: _Prepared, num_samples: int) -> int:
        return state.traced.prior.length

    def _posterior_predictive(self, traced: TracedModel, rng_key: Array, samples: dict) -> dict:
        return posterior_predictive(traced, rng_key, samples[traced.prior_name])
