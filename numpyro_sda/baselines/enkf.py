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

Localisation (states on a 1-D or 2-D periodic grid: Lorenz-96, Kuramoto–Sivashinsky, Kolmogorov
vorticity) uses the Gaspari & Cohn (1999) taper :math:`\rho` of the wrapped Euclidean grid
distance with half-width ``localization`` (zero beyond twice it): one transform per state
variable :math:`i` (LETKF-style R-localisation, :math:`R_i^{-1} = \rho_i R^{-1}`, for the
square root; tapered gain :math:`\rho_i \circ K` with :math:`\rho_{yy} \circ YY^\top` for the
stochastic filter). Observation positions are read off the model (the state components each
observed element depends on). Multiplicative inflation :math:`\bar x + \lambda (x - \bar x)` is
applied after each analysis (as in DAPPER).

The EnKS (Evensen & van Leeuwen, 2000) applies each analysis transform to every earlier state
of the window as well: :math:`X^s_t = X^a_t T_{t+1} T_{t+2} \cdots T_{L-1}`, computed by one
backward scan over the stored transforms.

Several devices (``mesh=``, as for :class:`numpyro_sda.SDA`: ``None`` = every visible device,
``False`` = one, or a :class:`jax.sharding.Mesh` with a ``"draws"`` axis): the member axis of
the ensemble (and of the stored ``(L, N, size)`` history or EnKS window) is split over the
devices of the ``"draws"`` axis inside the one jitted program
(:class:`numpyro_sda.parallel.EnsembleSharding`): each device runs the forecasts and the
observation operator of its own :math:`N / D` members and applies the analysis transform to
them; GSPMD inserts the collectives of the ensemble means, the :math:`M \times M` and
:math:`N \times N` products (all-reduces over members) and replicates the small factorisations
(solve, SVD). Random numbers (forecast noise, perturbed observations, rotations) come from
``jax_threefry_partitionable`` bits, which do not depend on the sharding. When :math:`D` does
not divide :math:`N`, the members are split over :math:`\gcd(N, D)` devices (with a warning;
one device when the two are coprime). The result equals the ``mesh=False`` run with the same
key to float rounding (sums over members are added up per device, then across devices).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array
from jax.sharding import Mesh
from numpyro.primitives import Messenger

from numpyro_sda import parallel
from numpyro_sda.baselines.timesplit import (
    TimeSplit,
    check_baseline_model,
    gaussian_markov_split,
    gaussian_sites,
    observed_flat,
    posterior_predictive,
)
from numpyro_sda.results import InferenceMethod, check_choice, check_int, check_real
from numpyro_sda.tracing import TracedModel, trace_model

__all__ = [
    "EnKF",
    "EnKS",
    "EnsembleSettings",
    "analysis_transform",
    "apply_transform",
    "enkf_filter",
    "enks_backward",
    "etkf_transform",
    "gaspari_cohn",
    "localization_grid",
    "mean_preserving_rotation",
    "periodic_tapers",
    "stochastic_transform",
    "whiten_mvn",
]


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


# ---------------------------------------------------------------------------------- observations
class _WhitenMVN(Messenger):
    r"""Replace every observed ``MultivariateNormal(m(x), L L^T)`` site by the equivalent
    independent one, :math:`L^{-1} y \sim N(L^{-1} m(x), I)` (the same Kalman analysis; the
    log-density differs by the constant :math:`\log |\det L|`)."""

    def process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or not msg.get("is_observed"):
            return
        fn, n_event = msg["fn"], 0
        while isinstance(fn, dist.Independent):
            n_event += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        if not isinstance(fn, dist.MultivariateNormal):
            return
        solve = jnp.vectorize(
            lambda L, v: jax.scipy.linalg.solve_triangular(L, v, lower=True),
            signature="(k,k),(k)->(k)",
        )
        loc = solve(fn.scale_tril, fn.loc)
        white = dist.Normal(loc, jnp.ones_like(loc)).to_event(1 + n_event)
        msg["fn"] = white
        msg["value"] = solve(fn.scale_tril, jnp.asarray(msg["value"]))


def whiten_mvn(model: Callable) -> Callable:
    """``model`` with its observed ``MultivariateNormal`` sites whitened (see :class:`_WhitenMVN`),
    so that every observed element has its own independent Gaussian noise."""

    def whitened(*args: Any, **kwargs: Any) -> Any:
        with _WhitenMVN():
            return model(*args, **kwargs)

    return whitened


class GaussianObservations(NamedTuple):
    """Per-time padded Gaussian observations ``y_t = h_t(x_t) + N(0, diag(r_t^2))`` and, for
    localisation, the grid coordinates of each observed element (``None`` without)."""

    split: TimeSplit
    y: Array  # (L, M), zero where masked
    r: Array  # (L, M), one where masked
    mask: Array  # (L, M)
    positions: Array | None  # (L, M, ndim) grid coordinates
    grid: tuple[int, ...] | None = None  # the periodic grid of the localisation


def localization_grid(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The periodic grid that localisation measures distances on: the state shape without its
    axes of size 1 (``(32,)``, ``(1, 64)`` -> 1-D; ``(1, 64, 64)`` -> 2-D). Several channels at
    one grid point (e.g. velocity ``(2, 64, 64)``) are not supported."""
    grid = tuple(int(d) for d in shape if d != 1)
    if len(grid) not in (1, 2):
        raise ValueError(
            "localization needs states on a 1-D or 2-D periodic grid (axes of size 1 allowed, "
            f"one channel), got state shape {tuple(shape)}"
        )
    return grid


def _component_locations(loc_of, points, L, grid, key, chunk: int = 256) -> np.ndarray:
    """Grid coordinates ``(n, len(grid))`` of the state components each flat observation
    depends on: per axis the circular mean of the coordinates of those components (exact for
    a single component or a contiguous block; 0 if none). Dependence is read off
    Jacobian-vector products at random points, ``chunk`` components at a time."""
    size = int(np.prod(grid))
    n = int(jax.eval_shape(loc_of, points[0]).shape[0])
    dep = np.zeros((n, size), bool)
    for p, k in zip(points, jax.random.split(key, points.shape[0]), strict=True):
        def one(inp, p=p):
            j, kk = inp
            v = jax.random.normal(kk, (L,), p.dtype)
            tangent = jnp.zeros((L, size), p.dtype).at[:, j].set(v).reshape(p.shape)
            _, jv = jax.jvp(loc_of, (p,), (tangent,))
            return (jv != 0) | ~jnp.isfinite(jv)

        d = jax.jit(lambda js, ks: jax.lax.map(one, (js, ks), batch_size=chunk))(
            jnp.arange(size), jax.random.split(k, size))
        dep |= np.asarray(d).T
    coords = np.stack(np.unravel_index(np.arange(size), grid), axis=-1)  # (size, ndim)
    angles = np.exp(2j * np.pi * coords / np.asarray(grid))  # (size, ndim)
    mean = np.angle(dep.astype(np.complex128) @ angles)  # (n, ndim); 0 where no dependence
    return np.mod(mean * np.asarray(grid) / (2 * np.pi), np.asarray(grid))


def gaussian_observations(traced: TracedModel, key: Array, method: str,
                          localize: bool) -> GaussianObservations:
    """Read the per-time Gaussian observation model off a traced (whitened) model."""
    prior = traced.prior
    L, shape = prior.length, prior.state_shape
    points, loc_of, split = gaussian_markov_split(traced, key, method)
    _, r0, m0 = gaussian_sites(traced, points[0])
    _, r1, _ = gaussian_sites(traced, points[1])
    if float(jnp.max(jnp.abs(r1 - r0))) > 1e-5 * float(jnp.max(jnp.abs(r0))):
        raise ValueError(f"{method} needs observation noise scales that do not depend on the state")
    y_all = observed_flat(traced, points[0])
    idx = jnp.asarray(split.index)
    msk = jnp.asarray(split.mask) & m0[idx]
    positions = grid = None
    if localize:
        grid = localization_grid(shape)
        comp = _component_locations(loc_of, points, L, grid, jax.random.fold_in(key, 2))
        positions = jnp.asarray(comp)[idx]
    return GaussianObservations(
        split, jnp.where(msk, y_all[idx], 0.0), jnp.where(msk, r0[idx], 1.0), msk, positions,
        grid,
    )


# ---------------------------------------------------------------------------------- analysis
def periodic_tapers(positions: Array, grid: int | tuple[int, ...],
                    radius: float) -> tuple[Array, Array]:
    """Gaspari–Cohn tapers on a periodic grid (``grid``: its size, or its shape for 2-D):
    state–observation ``(prod(grid), M)`` and observation–observation ``(M, M)``, from the
    observations' grid coordinates ``positions`` ``(M,)`` (1-D) or ``(M, len(grid))``. The
    distance is Euclidean with each axis wrapped, :math:`d_a = \\min(|\\Delta_a|, n_a - |\\Delta_a|)`."""
    shape = (grid,) if np.ndim(grid) == 0 else tuple(grid)
    n = jnp.asarray(shape, jnp.float32)
    pos = positions.reshape(positions.shape[0], len(shape))
    cells = jnp.stack(jnp.unravel_index(jnp.arange(int(np.prod(shape))), shape), axis=-1)

    def taper(a, b):
        dd = jnp.abs(a[:, None, :] - b[None, :, :])
        dd = jnp.minimum(dd, n - dd)
        return gaspari_cohn(jnp.sqrt(jnp.sum(dd**2, axis=-1)) / radius)

    return taper(cells.astype(pos.dtype), pos), taper(pos, pos)


def stochastic_transform(key: Array, Y: Array, HE: Array, y: Array, r: Array, m: Array,
                         tapers: tuple[Array, Array] | None = None) -> Array:
    r"""Perturbed-observation EnKF right transforms ``(G, N, N)``:
    :math:`T = I + \Pi Y^\top (Y Y^\top + (N-1) R)^{-1} D`, or with tapers
    :math:`T_i = I + \Pi Y^\top \mathrm{diag}(\rho_i) (\rho_{yy} \circ Y Y^\top + (N-1) R)^{-1} D`."""
    N = HE.shape[0]
    eye = jnp.eye(N)
    Pi = eye - jnp.ones((N, N)) / N
    eps = jax.random.normal(key, (N, y.shape[0]), HE.dtype) * r
    eps = eps - eps.mean(0)
    D = jnp.where(m[:, None], (y + eps - HE).T, 0.0)  # (M, N)
    R = jnp.diag(jnp.where(m, r**2, 1.0))
    if tapers is None:
        C = Y @ Y.T + (N - 1) * R
        return (eye + (Pi @ Y.T) @ jnp.linalg.solve(C, D))[None]
    rho_xy, rho_yy = tapers
    G = jnp.linalg.solve(rho_yy * (Y @ Y.T) + (N - 1) * R, D)  # (M, N)
    return eye[None] + jnp.einsum("nk,km,im,mj->inj", Pi, Y.T, rho_xy, G)


def etkf_transform(Y: Array, d: Array, w_obs: Array) -> Array:
    r"""Square-root (ETKF) right transform ``(N, N)`` with observation precisions ``w_obs``.

    With the thin SVD :math:`S = \mathrm{diag}(\sqrt{w}) Y = U \mathrm{diag}(s) V^\top`,
    :math:`P_w = (I - V \mathrm{diag}(g / (N-1+g)) V^\top) / (N-1)`, :math:`g = s^2`, so that the
    cost is :math:`O(N \min(M, N)^2)` instead of :math:`O(N^3)`.
    """
    N = Y.shape[1]
    eye = jnp.eye(N)
    S = Y * jnp.sqrt(w_obs)[:, None]
    U, sv, Vt = jnp.linalg.svd(S, full_matrices=False)
    g = sv**2
    wbar = Vt.T @ (sv / (N - 1 + g) * (U.T @ (d * jnp.sqrt(w_obs))))
    W = eye + (Vt.T * (jnp.sqrt((N - 1) / (N - 1 + g)) - 1.0)) @ Vt
    Z = wbar[:, None] + W
    return jnp.ones((N, N)) / N + Z - Z.mean(0, keepdims=True)  # 11^T/N + Pi Z


def analysis_transform(key: Array, HE: Array, y: Array, r: Array, m: Array, variant: str,
                       tapers: tuple[Array, Array] | None = None) -> Array:
    """The ``(G, N, N)`` analysis transforms of one time step (``G = 1`` global, ``G = size``
    localised) from the observed ensemble ``HE`` ``(N, M)`` and the observations."""
    HE = jnp.where(m[None], HE, 0.0)
    Y = (HE - HE.mean(0)).T  # (M, N)
    if variant == "stochastic":
        return stochastic_transform(key, Y, HE, y, r, m, tapers)
    d = jnp.where(m, y - HE.mean(0), 0.0)
    prec = jnp.where(m, 1.0 / r**2, 0.0)
    if tapers is None:
        return etkf_transform(Y, d, prec)[None]
    return jax.vmap(lambda rr: etkf_transform(Y, d, prec * rr))(tapers[0])


def apply_transform(E: Array, T: Array) -> Array:
    """``X T`` for an ensemble ``E`` ``(N, size)``: one global or one per state component."""
    if T.shape[0] == 1:
        return T[0].T @ E
    return jnp.einsum("mi,imn->ni", E, T)


def _apply_window(W: Array, T: Array) -> Array:
    if T.shape[0] == 1:
        return jnp.einsum("mn,lmi->lni", T[0], W)
    return jnp.einsum("lmi,imn->lni", W, T)


def enkf_filter(key: Array, E0: Array, forecast: Callable[[Array, Array], Array],
                analysis: Callable[[Array, Array, Array], tuple[Array, Array]],
                has_obs: Array, *, smooth: bool, window: bool,
                members: parallel.EnsembleSharding | None = None) -> tuple[Array, Array | None]:
    """The forecast–analysis loop over ``L = len(has_obs)`` steps (one ``lax.scan``).

    ``forecast(key, E) -> E`` and ``analysis(key, E, t) -> (E, T)``. Returns the analysis
    ensembles ``(L, N, size)`` and the stored transforms (for :func:`enks_backward`) or ``None``.
    With ``window`` (EnKS) each analysis is applied at once to every earlier state instead.
    ``members`` (default: one device) splits the member axis of the ensembles over devices.
    """
    sh = members if members is not None else parallel.EnsembleSharding()
    L = has_obs.shape[0]
    ka, key = jax.random.split(key)
    E0, _ = analysis(ka, sh.split(E0), 0)
    E0 = sh.split(E0)
    W0 = sh.split(jnp.zeros((L, *E0.shape), E0.dtype).at[0].set(E0), dim=1) if window else None

    def body(carry, inp):
        E, W = carry
        t, k = inp
        kf, ka = jax.random.split(k)
        E, T = analysis(ka, sh.split(forecast(kf, E)), t)
        E = sh.split(E)
        if window:
            W = jax.lax.cond(has_obs[t], lambda: _apply_window(W, T), lambda: W)
            return (E, sh.split(W.at[t].set(E), dim=1)), None
        return (E, W), (E, T if smooth else None)

    (_, W), outs = jax.lax.scan(body, (E0, W0), (jnp.arange(1, L), jax.random.split(key, L - 1)))
    if window:
        return W, None
    Es, Ts = outs
    return sh.split(jnp.concatenate([E0[None], Es]), dim=1), Ts


def enks_backward(Es: Array, Ts: Array, has_obs: Array,
                  members: parallel.EnsembleSharding | None = None) -> Array:
    r"""Ensemble Kalman smoother pass: :math:`X^s_t = X^a_t T_{t+1} \cdots T_{L-1}`, by one
    backward scan over the stored transforms ``Ts`` ``(L-1, G, N, N)`` (the member axis split
    by ``members``, default one device)."""
    sh = members if members is not None else parallel.EnsembleSharding()
    ident = jnp.broadcast_to(jnp.eye(Es.shape[1]), Ts.shape[1:])

    def back(P, inp):
        E_t, T_next, obs_next = inp  # P_t = T_{t+1} P_{t+1}
        P = jax.lax.cond(obs_next, lambda: jnp.einsum("gij,gjk->gik", T_next, P), lambda: P)
        return P, sh.split(apply_transform(E_t, P))

    _, Ess = jax.lax.scan(back, ident, (Es[:-1], Ts, has_obs[1:]), reverse=True)
    return sh.split(jnp.concatenate([Ess, Es[-1:]]), dim=1)


# ---------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class EnsembleSettings:
    """Settings of :class:`EnKF` / :class:`EnKS` (validated on construction)."""

    ensemble_size: int = 100
    variant: str = "stochastic"
    inflation: float = 1.0
    localization: float | None = None
    rotate: bool = False
    mesh: Any = None

    def __post_init__(self) -> None:
        f = object.__setattr__
        f(self, "ensemble_size", check_int("ensemble_size", self.ensemble_size, 2))
        check_choice("variant", self.variant, ("stochastic", "sqrt"))
        f(self, "inflation", check_real("inflation", self.inflation, low=0, low_open=True))
        if self.localization is not None:
            f(self, "localization", check_real("localization", self.localization, low=0,
                                               low_open=True))
        if not isinstance(self.rotate, bool | np.bool_):
            raise TypeError(f"rotate must be a bool, got {self.rotate!r}")
        f(self, "rotate", bool(self.rotate))
        parallel.check_mesh(self.mesh)


class _Prepared(NamedTuple):
    compiled: Any
    traced: TracedModel
    length: int
    members: parallel.EnsembleSharding


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
        mesh: Mesh | None | bool = None,
        settings: EnsembleSettings | None = None,
    ) -> None:
        if settings is None:
            settings = EnsembleSettings(ensemble_size, variant, inflation, localization, rotate,
                                        mesh)
        elif not isinstance(settings, EnsembleSettings):
            raise TypeError(f"settings must be an EnsembleSettings, got {type(settings).__name__}")
        super().__init__(model, settings)
        self.sharding: parallel.EnsembleSharding | None = None
        self._compiled: Any = None

    def default_num_samples(self, traced: TracedModel) -> int:
        return self.settings.ensemble_size

    def _check_model(self, traced: TracedModel) -> None:
        check_baseline_model(traced, type(self).__name__)

    def _build(self, traced: TracedModel, obs: GaussianObservations,
               members: parallel.EnsembleSharding | None = None):
        """The jitted ``run(key) -> ensemble (N, L, *state_shape)``, the member axis split by
        ``members`` (default: one device)."""
        s, prior = self.settings, traced.prior
        sh = members if members is not None else parallel.EnsembleSharding()
        N, L, shape = s.ensemble_size, prior.length, prior.state_shape
        size = int(np.prod(shape, dtype=int))
        idx, has_obs = jnp.asarray(obs.split.index), jnp.asarray(obs.split.has_obs)

        def observe(E, t):  # (N, size) -> (N, M) means of the elements assigned to t
            def one(x):
                xx = jnp.broadcast_to(x.reshape(shape), (L, *shape))
                return gaussian_sites(traced, xx)[0][idx[t]]

            return jax.vmap(one)(E)

        G = 1 if s.localization is None else size
        ident = jnp.broadcast_to(jnp.eye(N), (G, N, N))
        # EnKS: multiply the N x N transforms backwards (cost ~ G N^3 per analysis) or apply each
        # analysis to the stored window (cost ~ L N^2 size per analysis), whichever is cheaper
        window = self.smooth and G * N >= L * size

        def analysis(key, E, t):
            def do():
                k1, k2 = jax.random.split(key)
                tapers = (None if obs.positions is None else
                          periodic_tapers(obs.positions[t], obs.grid, s.localization))
                T = analysis_transform(k1, sh.split(observe(E, t)), obs.y[t], obs.r[t],
                                       obs.mask[t], s.variant, tapers)
                if s.rotate:
                    T = jnp.einsum("gij,jk->gik", T, mean_preserving_rotation(k2, N))
                Ea = sh.split(apply_transform(E, T))
                mu = Ea.mean(0)
                return sh.split(mu + s.inflation * (Ea - mu)), T  # multiplicative inflation

            return jax.lax.cond(has_obs[t], do, lambda: (E, ident))

        def forecast(key, E):
            keys = sh.split(jax.random.split(key, N))
            E = jax.vmap(lambda kk, x: prior.transition(x.reshape(shape)).sample(kk))(keys, E)
            return sh.split(E.reshape(N, size))

        @jax.jit
        def run(key):
            k0, key = jax.random.split(key)
            E0 = sh.split(prior.initial.sample(k0, (N,)).reshape(N, size))
            Es, Ts = enkf_filter(key, E0, forecast, analysis, has_obs, smooth=self.smooth,
                                 window=window, members=sh)
            if self.smooth and not window:
                Es = enks_backward(Es, Ts, has_obs, sh)
            return sh.split(jnp.moveaxis(Es, 0, 1).reshape(N, L, *shape))

        return run

    def _prepare(self, traced: TracedModel, rng_key: Array, num_samples: int) -> _Prepared:
        if num_samples > self.settings.ensemble_size:
            raise ValueError(f"num_samples ({num_samples}) must be at most ensemble_size "
                             f"({self.settings.ensemble_size}): the draws are ensemble members")
        # the algorithm sees observed MultivariateNormal sites whitened; the result keeps the
        # user's sites (observations, posterior predictive)
        white = trace_model(whiten_mvn(self.model), traced.args, traced.kwargs)
        kp, kr = jax.random.split(rng_key)
        obs = gaussian_observations(white, kp, type(self).__name__,
                                    self.settings.localization is not None)
        members = parallel.EnsembleSharding.for_ensemble(
            self.settings.mesh, self.settings.ensemble_size, what="ensemble members", stacklevel=3)
        compiled = self._build(white, obs, members).lower(members.place(kr)).compile()
        self.sharding = members
        self._compiled = compiled  # the partitioned program, for inspection (as_text())
        return _Prepared(compiled, traced, traced.prior.length, members)

    def _draw(self, state: _Prepared, rng_key: Array, num_samples: int) -> tuple[dict, dict]:
        sh = state.members
        ens = sh.fetch(state.compiled(sh.place(rng_key)))
        stats = {"mean": ens.mean(0), "std": ens.std(0, ddof=1)}
        return {state.traced.prior_name: ens[:num_samples]}, stats

    def _finish(self, state: _Prepared, samples: dict, stats: dict) -> None:
        if not bool(jnp.all(jnp.isfinite(stats["mean"]))):
            raise ValueError(
                f"{type(self).__name__} produced non-finite states: the ensemble diverged "
                "(try more members, inflation or localization)"
            )

    def _num_model_evals(self, state: _Prepared, num_samples: int) -> int:
        return self.settings.ensemble_size * state.length

    def _posterior_predictive(self, traced: TracedModel, rng_key: Array, samples: dict) -> dict:
        return posterior_predictive(traced, rng_key, samples[traced.prior_name])


class EnKF(_EnsembleKalman):
    """Ensemble Kalman filter: ``get_samples()[site][:, t]`` is the analysis ensemble at ``t``.

    Args:
        model: the user's model with a ``MarkovPrior`` trajectory site and Gaussian observation
            sites (``Normal`` or ``MultivariateNormal``; any mean function of one time step,
            state-independent noise).
        ensemble_size: number of members :math:`N`; ``run(..., num_samples=M)`` returns the
            first ``M <= N`` members (default all).
        variant: ``"stochastic"`` (perturbed observations) or ``"sqrt"`` (ETKF / LETKF).
        inflation: multiplicative inflation :math:`\\lambda` applied after each analysis.
        localization: Gaspari–Cohn half-width in grid points for states on a 1-D or 2-D
            periodic grid (axes of size 1 are dropped: ``(32,)``, ``(1, 64, 64)``), or None.
        rotate: post-multiply each analysis transform by a random mean-preserving rotation
            (DAPPER's ``rot=True``), which keeps small square-root ensembles from clustering.
        mesh: the devices the ensemble members are split over: ``None`` (default: every
            visible device, :func:`numpyro_sda.parallel.draws_mesh`), ``False`` (one device) or
            a :class:`jax.sharding.Mesh` with a ``"draws"`` axis. Results equal the
            ``mesh=False`` run with the same key to float rounding (module docstring).
        settings: an :class:`EnsembleSettings` instead of the keywords above.

    The returned draws are filtering marginals (not a joint smoothing distribution);
    ``sample_stats["mean"]`` is the analysis mean, ``"std"`` the ensemble spread (whole
    ensemble). ``sharding`` is the :class:`~numpyro_sda.parallel.EnsembleSharding` of the last
    run (``sharding.mesh``: the mesh the members were split over, ``None`` for one device).
    """

    method = "EnKF"


class EnKS(_EnsembleKalman):
    """Ensemble Kalman smoother over the whole window (same arguments as :class:`EnKF`).

    ``get_samples()[site]`` is the smoothed ensemble ``(N, L, *state_shape)``.
    """

    method = "EnKS"
    smooth = True
