r"""Ensemble Kalman filter and smoother on the user's NumPyro model.

With an ensemble :math:`X = [x^1, \dots, x^N]` (columns), anomalies :math:`A = X - \bar x
\mathbf{1}^\top`, observed anomalies :math:`Y = \mathcal{H}(X) - \overline{\mathcal{H}(X)}` (the
model's Gaussian site means evaluated member by member, so nonlinear operators need no
linearisation) and innovation :math:`d = y - \overline{\mathcal{H}(X)}`, every analysis is a right
transform :math:`X^a = X T`:

* stochastic EnKF (Burgers, van Leeuwen & Evensen, 1998), perturbed observations
  :math:`D = y \mathbf{1}^\top + R^{1/2} E - \mathcal{H}(X)` (perturbations centred):
  :math:`T = I + \Pi Y^\top (Y Y^\top + (N-1) R)^{-1} D`, :math:`\Pi = I - \mathbf{1}\mathbf{1}^\top/N`;
* square-root ETKF (Bishop, Etherton & Majumdar, 2001; Hunt, Kostelich & Szunyogh, 2007), with
  :math:`S = R^{-1/2} Y`, :math:`P_w = ((N-1) I + S^\top S)^{-1}`, :math:`\bar w = P_w S^\top
  R^{-1/2} d`: :math:`T = \mathbf{1}\mathbf{1}^\top/N + \Pi(\bar w \mathbf{1}^\top + [(N-1)P_w]^{1/2})`.

Localisation (Lorenz-96 and other 1-D periodic states) uses the Gaspari & Cohn (1999) taper
:math:`\rho` with half-width ``localization`` (zero beyond twice it): one transform per state
variable :math:`i` (LETKF-style R-localisation, :math:`R_i^{-1} = \rho_i R^{-1}`, for the
square root; tapered gain :math:`\rho_i \circ K` with :math:`\rho_{yy} \circ YY^\top` for the
stochastic filter). Observation positions are read off the model (the state components each
observed element depends on). Multiplicative inflation :math:`\bar x + \lambda (x - \bar x)` is
applied after each analysis (as in DAPPER).

The EnKS (Evensen & van Leeuwen, 2000) applies each analysis transform to every earlier state
of the window as well: :math:`X^s_t = X^a_t T_{t+1} T_{t+2} \cdots T_{L-1}`, computed by one
backward scan over the stored transforms.
"""

from __future__ import annotations

import time
from typing import Any

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
from numpyro_sda.tracing import trace_model

__all__ = ["EnKF", "EnKS", "gaspari_cohn", "mean_preserving_rotation"]


def mean_preserving_rotation(key: Array, n: int) -> Array:
    r"""A random orthogonal ``n x n`` matrix :math:`\Omega` with :math:`\Omega \mathbf{1} = \mathbf{1}`
    (Haar on the complement of :math:`\mathbf{1}`; the "rot" option of Sakov & Oke, 2008)."""
    k1, k2 = jax.random.split(key)
    M = jnp.concatenate([jnp.ones((n, 1)), jax.random.normal(k1, (n, n - 1))], axis=1)
    V, Rv = jnp.linalg.qr(M)
    V = V * jnp.sign(jnp.diagonal(Rv))[None, :]  # first column = +1/sqrt(n)
    Qr, Rr = jnp.linalg.qr(jax.random.normal(k2, (n - 1, n - 1)))
    Qr = Qr * jnp.sign(jnp.diagonal(Rr))[None, :]
    B = jnp.zeros((n, n)).at[0, 0].set(1.0).at[1:, 1:].set(Qr)
    return V @ B @ V.T


def gaspari_cohn(r: Array) -> Array:
    """Gaspari–Cohn fifth-order compactly supported correlation, ``r = distance / half-width``."""
    r = jnp.abs(r)
    a = 1 - 5 / 3 * r**2 + 5 / 8 * r**3 + 1 / 2 * r**4 - 1 / 4 * r**5
    rs = jnp.maximum(r, 1e-12)
    b = 4 - 5 * r + 5 / 3 * r**2 + 5 / 8 * r**3 - 1 / 2 * r**4 + 1 / 12 * r**5 - 2 / (3 * rs)
    return jnp.where(r <= 1, a, jnp.where(r < 2, b, 0.0))


def _component_locations(loc_of, points, L, size, key) -> np.ndarray:
    """Mean state-component index each flat observation depends on (-1 if none)."""
    n = int(jax.eval_shape(loc_of, points[0]).shape[0])
    dep = np.zeros((n, size), bool)
    for p, k in zip(points, jax.random.split(key, points.shape[0]), strict=True):
        def one(j, kk, p=p):
            v = jax.random.normal(kk, (L,), p.dtype)
            tangent = jnp.zeros((L, size), p.dtype).at[:, j].set(v).reshape(p.shape)
            _, jv = jax.jvp(loc_of, (p,), (tangent,))
            return (jv != 0) | ~jnp.isfinite(jv)

        d = jax.jit(jax.vmap(one))(jnp.arange(size), jax.random.split(k, size))
        dep |= np.asarray(d).T
    cnt = dep.sum(1)
    pos = (dep * np.arange(size)).sum(1) / np.maximum(cnt, 1)
    return np.where(cnt > 0, pos, -1.0)


class _EnsembleKalman(InferenceMethod):
    smooth = False

    def __init__(
        self,
        model,
        ensemble_size: int = 100,
        *,
        variant: str = "stochastic",
        inflation: float = 1.0,
        localization: float | None = None,
        rotate: bool = False,
    ) -> None:
        if int(ensemble_size) != ensemble_size or ensemble_size < 2:
            raise ValueError(f"ensemble_size must be an integer >= 2, got {ensemble_size!r}")
        if variant not in ("stochastic", "sqrt"):
            raise ValueError(f"variant must be 'stochastic' or 'sqrt', got {variant!r}")
        if not inflation > 0:
            raise ValueError(f"inflation must be positive, got {inflation!r}")
        if localization is not None and not localization > 0:
            raise ValueError(f"localization must be a positive radius or None, got {localization!r}")
        super().__init__(
            model, ensemble_size=int(ensemble_size), variant=variant,
            inflation=float(inflation), localization=localization, rotate=bool(rotate),
        )
        self.N = int(ensemble_size)

    def _prepare(self, key, traced, prior):
        L, shape = prior.length, prior.state_shape
        size = int(np.prod(shape, dtype=int))
        points, loc_of, split = gaussian_markov_split(traced, key, type(self).__name__)
        _, r0, m0 = gaussian_sites(traced, points[0])
        _, r1, _ = gaussian_sites(traced, points[1])
        if float(jnp.max(jnp.abs(r1 - r0))) > 1e-5 * float(jnp.max(jnp.abs(r0))):
            raise ValueError(
                f"{type(self).__name__} needs observation noise scales that do not depend on "
                "the state"
            )
        y_all = observed_flat(traced, points[0])
        comp = None
        if self.settings["localization"] is not None:
            if len(shape) != 1:
                raise ValueError(
                    f"localization needs 1-D (periodic) states, got state shape {shape}"
                )
            comp = _component_locations(loc_of, points, L, size, jax.random.fold_in(key, 2))
        return split, r0, m0, y_all, comp

    def run(self, rng_key: Array, *model_args: Any, **model_kwargs: Any):
        traced = trace_model(self.model, model_args, model_kwargs)
        prior = check_baseline_model(traced, type(self).__name__)
        kp, kr, kpp = jax.random.split(rng_key, 3)
        split, r_all, m_all, y_all, comp = self._prepare(kp, traced, prior)
        N, L, shape = self.N, prior.length, prior.state_shape
        size = int(np.prod(shape, dtype=int))
        idx = jnp.asarray(split.index)
        msk = jnp.asarray(split.mask) & m_all[idx]
        y_t, r_t = jnp.where(msk, y_all[idx], 0.0), jnp.where(msk, r_all[idx], 1.0)
        has_obs = jnp.asarray(split.has_obs)
        variant, infl = self.settings["variant"], self.settings["inflation"]
        radius = self.settings["localization"]
        if radius is not None:
            pos = jnp.asarray(comp)[idx]  # (L, M) observation positions
            grid = jnp.arange(size)

            def taper_xy(p):  # (M,) -> (size, M)
                dd = jnp.abs(grid[:, None] - p[None, :])
                dd = jnp.minimum(dd, size - dd)
                return gaspari_cohn(dd / radius)

            def taper_yy(p):
                dd = jnp.abs(p[:, None] - p[None, :])
                dd = jnp.minimum(dd, size - dd)
                return gaspari_cohn(dd / radius)

        def observe(E, t):
            def one(x):
                xx = jnp.broadcast_to(x.reshape(shape), (L, *shape))
                return gaussian_sites(traced, xx)[0][idx[t]]

            return jax.vmap(one)(E)  # (N, M)

        eye = jnp.eye(N)
        Pi = eye - jnp.ones((N, N)) / N

        def transforms(key, E, t):
            """(G, N, N) right transforms (G = 1 global, G = size localised)."""
            m_t, y, r = msk[t], y_t[t], r_t[t]
            HE = jnp.where(m_t[None], observe(E, t), 0.0)  # (N, M)
            Y = (HE - HE.mean(0)).T  # (M, N)
            d = jnp.where(m_t, y - HE.mean(0), 0.0)
            if variant == "stochastic":
                eps = jax.random.normal(key, (N, y.shape[0]), E.dtype) * r
                eps = eps - eps.mean(0)
                D = jnp.where(m_t[:, None], (y + eps - HE).T, 0.0)  # (M, N)
                R = jnp.diag(jnp.where(m_t, r**2, 1.0))
                if radius is None:
                    C = Y @ Y.T + (N - 1) * R
                    return (eye + (Pi @ Y.T) @ jnp.linalg.solve(C, D))[None]
                p = pos[t]
                C = taper_yy(p) * (Y @ Y.T) + (N - 1) * R
                G = jnp.linalg.solve(C, D)  # (M, N)
                rho = taper_xy(p)  # (size, M)
                return eye[None] + jnp.einsum("nk,km,im,mj->inj", Pi, Y.T, rho, G)

            def etkf(w_obs):  # w_obs: (M,) precision weights rho / r^2
                # thin SVD S = U diag(s) V^T: P_w = (I - V diag(g / (N-1+g)) V^T) / (N-1),
                # g = s^2, so that the cost is O(N min(M, N)^2) instead of O(N^3)
                S = Y * jnp.sqrt(w_obs)[:, None]
                U, sv, Vt = jnp.linalg.svd(S, full_matrices=False)
                g = sv**2
                wbar = Vt.T @ (sv / (N - 1 + g) * (U.T @ (d * jnp.sqrt(w_obs))))
                W = eye + (Vt.T * (jnp.sqrt((N - 1) / (N - 1 + g)) - 1.0)) @ Vt
                Z = wbar[:, None] + W
                return jnp.ones((N, N)) / N + Z - Z.mean(0, keepdims=True)  # 11^T/N + Pi Z

            prec = jnp.where(m_t, 1.0 / r**2, 0.0)
            if radius is None:
                return etkf(prec)[None]
            rho = taper_xy(pos[t])
            return jax.vmap(lambda rr: etkf(prec * rr))(rho)

        def apply(E, T):
            if T.shape[0] == 1:
                return T[0].T @ E
            return jnp.einsum("mi,imn->ni", E, T)

        def inflate(E):
            mu = E.mean(0)
            return mu + infl * (E - mu)

        G = 1 if radius is None else size
        ident = jnp.broadcast_to(eye, (G, N, N))
        smooth = self.smooth
        # EnKS: multiply the N x N transforms backwards (cost ~ G N^3 per analysis) or apply each
        # analysis to the stored window (cost ~ L N^2 size per analysis), whichever is cheaper
        window = smooth and G * N >= L * size

        def apply_window(W, T):
            if T.shape[0] == 1:
                return jnp.einsum("mn,lmi->lni", T[0], W)
            return jnp.einsum("lmi,imn->lni", W, T)

        rotate = self.settings["rotate"]

        def analysis(key, E, t):
            def do():
                k1, k2 = jax.random.split(key)
                T = transforms(k1, E, t)
                if rotate:
                    T = jnp.einsum("gij,jk->gik", T, mean_preserving_rotation(k2, N))
                return inflate(apply(E, T)), T

            return jax.lax.cond(has_obs[t], do, lambda: (E, ident))

        @jax.jit
        def run(key):
            k0, key = jax.random.split(key)
            E0 = prior.initial.sample(k0, (N,)).reshape(N, size)
            ka, key = jax.random.split(key)
            E0, _ = analysis(ka, E0, 0)
            W0 = jnp.zeros((L, N, size), E0.dtype).at[0].set(E0) if window else None

            def body(carry, inp):
                E, W = carry
                t, k = inp
                kf, ka = jax.random.split(k)
                keys = jax.random.split(kf, N)
                E = jax.vmap(lambda kk, x: prior.transition(x.reshape(shape)).sample(kk))(keys, E)
                E = E.reshape(N, size)
                E, T = analysis(ka, E, t)
                if window:  # apply this analysis to every earlier state of the window
                    W = jax.lax.cond(has_obs[t], lambda: apply_window(W, T), lambda: W)
                    W = W.at[t].set(E)
                    return (E, W), None
                return (E, W), (E, T if smooth else None)

            (_, W), outs = jax.lax.scan(
                body, (E0, W0), (jnp.arange(1, L), jax.random.split(key, L - 1))
            )
            if window:
                Es = W
            else:
                Es, Ts = outs
                Es = jnp.concatenate([E0[None], Es])
            if smooth and not window:
                def back(P, inp):
                    E_t, T_next, obs_next = inp  # P_t = T_{t+1} P_{t+1}
                    P = jax.lax.cond(
                        obs_next, lambda: jnp.einsum("gij,gjk->gik", T_next, P), lambda: P
                    )
                    return P, apply(E_t, P)

                _, Ess = jax.lax.scan(back, ident, (Es[:-1], Ts, has_obs[1:]), reverse=True)
                Es = jnp.concatenate([Ess, Es[-1:]])
            return jnp.moveaxis(Es, 0, 1).reshape(N, L, *shape)

        t0 = time.perf_counter()
        compiled = run.lower(kr).compile()
        self.compile_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        ens = jax.block_until_ready(compiled(kr))
        self.wall_time = time.perf_counter() - t0
        if not bool(jnp.all(jnp.isfinite(ens))):
            raise ValueError(
                f"{type(self).__name__} produced non-finite states: the ensemble diverged "
                "(try more members, inflation or localization)"
            )
        self.prior_site = traced.prior_name
        self.observations = dict(traced.observed)
        self._samples = {traced.prior_name: ens}
        self.sample_stats = {"mean": ens.mean(0), "std": ens.std(0, ddof=1)}
        self.posterior_predictive = posterior_predictive(traced, kpp, ens)
        self.num_model_evals = N * L
        return self


class EnKF(_EnsembleKalman):
    """Ensemble Kalman filter: ``get_samples()[site][:, t]`` is the analysis ensemble at ``t``.

    Args:
        model: the user's model with a ``MarkovPrior`` trajectory site and Gaussian observation
            sites (any mean function of one time step, state-independent noise).
        ensemble_size: number of members :math:`N`.
        variant: ``"stochastic"`` (perturbed observations) or ``"sqrt"`` (ETKF / LETKF).
        inflation: multiplicative inflation :math:`\\lambda` applied after each analysis.
        localization: Gaspari–Cohn half-width in grid points for 1-D periodic states, or None.
        rotate: post-multiply each analysis transform by a random mean-preserving rotation
            (DAPPER's ``rot=True``), which keeps small square-root ensembles from clustering.

    The returned draws are filtering marginals (not a joint smoothing distribution);
    ``sample_stats["mean"]`` is the analysis mean, ``"std"`` the ensemble spread.
    """

    method = "EnKF"


class EnKS(_EnsembleKalman):
    """Ensemble Kalman smoother over the whole window (same arguments as :class:`EnKF`).

    ``get_samples()[site]`` is the smoothed ensemble ``(N, L, *state_shape)``.
    """

    method = "EnKS"
    smooth = True
