r"""Linear-Gaussian state-space models and their exact Kalman filter / RTS smoother.

.. math:: x_1 \sim \mathcal{N}(m_0, P_0), \qquad x_{i+1} = A x_i + b + w_i,\ w_i \sim \mathcal{N}(0, Q),
          \qquad y_i = H x_i + v_i,\ v_i \sim \mathcal{N}(0, R).

The Kalman filter (Kalman, 1960) computes :math:`p(x_i \mid y_{1:i})`; the Rauch–Tung–Striebel
smoother (Rauch, Tung & Striebel, 1965; Särkkä, *Bayesian Filtering and Smoothing*, 2013, Alg. 8.2)
computes :math:`p(x_i \mid y_{1:L}) = \mathcal{N}(m^s_i, P^s_i)`:

.. math:: G_i = P^f_i A^\top (A P^f_i A^\top + Q)^{-1},\quad
          m^s_i = m^f_i + G_i (m^s_{i+1} - A m^f_i - b),\quad
          P^s_i = P^f_i + G_i (P^s_{i+1} - P^p_{i+1}) G_i^\top.

Missing observations are handled with a boolean mask of shape ``(L,)`` (whole times) or
``(L, p)`` (single elements): masked elements are dropped from the update exactly. These are the
exact references the SDA sampler and the baselines are tested against; the joint prior moments
(:meth:`LinearGaussian.prior_moments`) give the exact Gaussian over a whole trajectory.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array

from numpyro_sda.markov import LinearGaussianDynamics, MarkovPrior
from numpyro_sda.systems.base import DynamicalSystem, check_length

__all__ = ["LinearGaussian", "KalmanResult"]


class KalmanResult(NamedTuple):
    """Filtered or smoothed Gaussian marginals and the log-evidence :math:`\\log p(y_{1:L})`."""

    mean: Array  # (L, d)
    cov: Array  # (L, d, d)
    log_evidence: Array  # ()


def _as_matrix(name: str, M, shape: tuple[int, int] | None = None) -> Array:
    M = jnp.asarray(M)
    if M.ndim != 2:
        raise ValueError(f"{name} must be a matrix, got shape {M.shape}")
    if shape is not None and M.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {M.shape}")
    if not bool(jnp.all(jnp.isfinite(M))):
        raise ValueError(f"{name} contains non-finite values")
    return M


def _sym(P: Array) -> Array:
    return 0.5 * (P + jnp.swapaxes(P, -1, -2))


class LinearGaussian(DynamicalSystem):
    """Linear-Gaussian dynamics :math:`x_{i+1} = A x_i + b + w`, :math:`w \\sim N(0, Q)`.

    Args:
        A: ``(d, d)`` transition matrix.
        Q: ``(d, d)`` positive-definite process-noise covariance.
        m0: ``(d,)`` initial mean.
        P0: ``(d, d)`` positive-definite initial covariance.
        b: optional ``(d,)`` offset.
        mean, std: optional normalisation statistics (default 0 and 1: the model is usually
            already in the coordinates one wants).
    """

    dt = 1.0

    def __init__(self, A, Q, m0, P0, b=None, mean=None, std=None) -> None:
        A = _as_matrix("A", A)
        d = A.shape[0]
        if A.shape != (d, d):
            raise ValueError(f"A must be square, got shape {A.shape}")
        self.A = A
        self.Q = _as_matrix("Q", Q, (d, d))
        self.P0 = _as_matrix("P0", P0, (d, d))
        self.m0 = jnp.asarray(m0)
        if self.m0.shape != (d,):
            raise ValueError(f"m0 must have shape {(d,)}, got {self.m0.shape}")
        self.b = jnp.zeros(d, A.dtype) if b is None else jnp.asarray(b)
        if self.b.shape != (d,):
            raise ValueError(f"b must have shape {(d,)}, got {self.b.shape}")
        for name, M in (("Q", self.Q), ("P0", self.P0)):
            if np.linalg.eigvalsh(np.asarray(M, np.float64)).min() <= 0:
                raise ValueError(f"{name} must be symmetric positive definite")
        self.state_shape = (d,)
        self.dim = d
        self.mean = np.zeros(d, np.float32) if mean is None else np.asarray(mean, np.float32)
        self.std = np.ones(d, np.float32) if std is None else np.asarray(std, np.float32)

    # ------------------------------------------------------------------ dynamics
    def initial_distribution(self) -> dist.Distribution:
        return dist.MultivariateNormal(self.m0, self.P0)

    def step(self, x: Array) -> Array:
        return x @ self.A.T + self.b

    def transition(self, key: Array, x: Array) -> Array:
        w = jax.random.multivariate_normal(key, jnp.zeros(self.dim, x.dtype), self.Q.astype(x.dtype))
        return self.step(x) + w

    def markov_prior(self, length: int, model_error=None, normalized: bool = False,
                     spinup: int = 0) -> MarkovPrior:
        """The exact trajectory prior (physical coordinates by default for this system).

        ``model_error`` replaces :math:`Q` by ``model_error**2 I`` when given.
        """
        length = check_length("length", length, 1)
        spinup = check_length("spinup", spinup, 0)
        if normalized and not (np.all(self.mean == 0) and np.all(self.std == 1)):
            raise ValueError("LinearGaussian.markov_prior supports normalized=True only when "
                             "mean = 0 and std = 1; rescale A, Q, m0, P0 instead")
        Q = self.Q if model_error is None else model_error**2 * jnp.eye(self.dim)

        def transition(x):
            return dist.MultivariateNormal(self.step(x), Q)

        prior = MarkovPrior(
            self.initial_distribution(), transition, length,
            linear=LinearGaussianDynamics(self.A, self.b, Q, self.m0, self.P0),
        )
        return prior.spun_up(spinup) if spinup else prior

    # ------------------------------------------------------------------ exact moments
    def prior_moments(self, length: int) -> tuple[Array, Array]:
        """Exact mean ``(L, d)`` and covariance ``(L*d, L*d)`` of the whole trajectory.

        :math:`m_{i+1} = A m_i + b`, :math:`\\mathrm{Cov}(x_i, x_j) = A^{j-i} P_i` for
        :math:`j \\ge i`, with :math:`P_{i+1} = A P_i A^\\top + Q`.
        """
        L = check_length("length", length, 1)
        d = self.dim

        def advance(carry, _):
            m, P = carry
            nxt = (self.A @ m + self.b, _sym(self.A @ P @ self.A.T + self.Q))
            return nxt, nxt

        _, (ms, Ps) = jax.lax.scan(advance, (self.m0, self.P0), None, length=L - 1)
        means = jnp.concatenate([self.m0[None], ms], 0)
        Ps = jnp.concatenate([self.P0[None], Ps], 0)
        # powers A^k, k = 0..L-1

        def power(Ak, _):
            return self.A @ Ak, Ak

        _, Apow = jax.lax.scan(power, jnp.eye(d, dtype=self.A.dtype), None, length=L)
        i = jnp.arange(L)[:, None]
        j = jnp.arange(L)[None, :]
        Ak = Apow[jnp.abs(j - i)]  # (L, L, d, d): A^{|j - i|}
        # Cov(x_i, x_j) = P_i (A^{j-i})^T for j >= i, and A^{i-j} P_j for j < i
        upper = jnp.einsum("iab,ijcb->ijac", Ps, Ak)
        lower = jnp.einsum("ijab,jbc->ijac", Ak, Ps)
        blocks = jnp.where((j >= i)[..., None, None], upper, lower)
        cov = blocks.transpose(0, 2, 1, 3).reshape(L * d, L * d)
        return means, _sym(cov)

    # ------------------------------------------------------------------ filtering
    def _check_obs(self, y, H, R, mask):
        y = jnp.asarray(y)
        H = _as_matrix("H", H)
        p = H.shape[0]
        if H.shape[1] != self.dim:
            raise ValueError(f"H must have {self.dim} columns (the state dimension), got {H.shape}")
        R = _as_matrix("R", R, (p, p))
        if y.ndim != 2 or y.shape[1] != p:
            raise ValueError(f"y must have shape (length, {p}) for H of shape {H.shape}, got {y.shape}")
        if mask is None:
            if not bool(jnp.all(jnp.isfinite(y))):
                raise ValueError("y contains NaN/inf: pass mask= to mark missing observations")
            mask = jnp.ones(y.shape, bool)
        else:
            mask = jnp.asarray(mask, bool)
            if mask.shape == (y.shape[0],):
                mask = jnp.broadcast_to(mask[:, None], y.shape)
            if mask.shape != y.shape:
                raise ValueError(f"mask must have shape {(y.shape[0],)} or {y.shape}, got {mask.shape}")
            y = jnp.where(mask, y, 0.0)
            if not bool(jnp.all(jnp.isfinite(y))):
                raise ValueError("y contains NaN/inf at unmasked entries")
        return y, H, R, mask

    def kalman_filter(self, y, H, R, mask=None) -> KalmanResult:
        """Filtered marginals :math:`p(x_i \\mid y_{1:i})` and :math:`\\log p(y_{1:L})`.

        Args:
            y: ``(L, p)`` observations of :math:`y_i = H x_i + v_i`.
            H: ``(p, d)`` observation matrix; R: ``(p, p)`` noise covariance.
            mask: optional ``(L,)`` or ``(L, p)`` boolean, True where observed.
        """
        y, H, R, mask = self._check_obs(y, H, R, mask)
        return self._filter(y, H, R, mask)[0]

    def _filter(self, y, H, R, mask):
        p = H.shape[0]
        eye_p = jnp.eye(p, dtype=R.dtype)

        def update(m, P, yi, mi):
            Hm = jnp.where(mi[:, None], H, 0.0)
            Rm = jnp.where(mi[:, None] & mi[None, :], R, eye_p)
            S = _sym(Hm @ P @ Hm.T + Rm)
            r = yi - Hm @ m
            cho = jax.scipy.linalg.cho_factor(S, lower=True)
            K = jax.scipy.linalg.cho_solve(cho, Hm @ P).T
            m_new = m + K @ r
            IKH = jnp.eye(self.dim, dtype=P.dtype) - K @ Hm
            P_new = _sym(IKH @ P @ IKH.T + K @ Rm @ K.T)  # Joseph form
            logdet = 2.0 * jnp.sum(jnp.log(jnp.diag(cho[0])))
            maha = r @ jax.scipy.linalg.cho_solve(cho, r)
            n_obs = jnp.sum(mi)
            # masked rows contribute log N(0 | 0, 1) = -0.5 log 2pi each: remove them
            ll = -0.5 * (maha + logdet + n_obs * jnp.log(2.0 * jnp.pi))
            return m_new, P_new, ll

        def step(carry, inputs):
            m_pred, P_pred = carry
            yi, mi = inputs
            m, P, ll = update(m_pred, P_pred, yi, mi)
            nxt = (self.A @ m + self.b, _sym(self.A @ P @ self.A.T + self.Q))
            return nxt, (m, P, m_pred, P_pred, ll)

        _, (m, P, mp, Pp, ll) = jax.lax.scan(step, (self.m0, self.P0), (y, mask))
        return KalmanResult(m, P, jnp.sum(ll)), (mp, Pp)

    def rts_smoother(self, y, H, R, mask=None) -> KalmanResult:
        """Smoothed marginals :math:`p(x_i \\mid y_{1:L})` (Rauch–Tung–Striebel) and the evidence."""
        y, H, R, mask = self._check_obs(y, H, R, mask)
        filt, (mp, Pp) = self._filter(y, H, R, mask)

        def back(carry, inputs):
            ms_next, Ps_next = carry
            mf, Pf, mp_next, Pp_next = inputs
            G = jnp.linalg.solve(Pp_next, self.A @ Pf).T
            ms = mf + G @ (ms_next - mp_next)
            Ps = _sym(Pf + G @ (Ps_next - Pp_next) @ G.T)
            return (ms, Ps), (ms, Ps)

        last = (filt.mean[-1], filt.cov[-1])
        _, (ms, Ps) = jax.lax.scan(
            back, last, (filt.mean[:-1], filt.cov[:-1], mp[1:], Pp[1:]), reverse=True
        )
        ms = jnp.concatenate([ms, last[0][None]], 0)
        Ps = jnp.concatenate([Ps, last[1][None]], 0)
        return KalmanResult(ms, Ps, filt.log_evidence)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return other is self
