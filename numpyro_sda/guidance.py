r"""Likelihood-score approximations that turn a trajectory prior into a posterior sampler.

Sampling :math:`p(x \mid y)` by reverse diffusion needs the posterior score
:math:`\nabla_{x_t} \log p(x_t \mid y) = \nabla_{x_t} \log p(x_t) + \nabla_{x_t} \log p(y \mid
x_t)`. In noise-prediction form the guided predictor is

.. math:: \varepsilon_y(x_t, t) = \varepsilon(x_t, t) - \sigma(t)\, \nabla_{x_t} \log p(y \mid x_t).

The likelihood :math:`p(y \mid x_t) = \int p(y \mid x)\, p(x \mid x_t)\, dx` is intractable; with
Tweedie's denoiser :math:`\hat{x} = \mathbb{E}[x \mid x_t] = (x_t - \sigma \varepsilon) / \mu`
and an observation model :math:`y \sim N(A(x), \Sigma_y)` the approximations are:

* ``"sda"`` (Rozet & Louppe, 2023, arXiv:2306.10574, Eq. 13):
  :math:`p(y \mid x_t) \approx N(y \mid A(\hat{x}), \Sigma_y + \gamma (\sigma/\mu)^2 I)`,
  differentiated through :math:`\hat{x}`.
* ``"dps"`` (Chung et al., 2023, "Diffusion posterior sampling", arXiv:2209.14687):
  :math:`\nabla_{x_t} \log p(y \mid x_t) \approx -\zeta\, \nabla_{x_t} \|r\|^2 / \|r\|` with
  :math:`r = y - A(\hat{x})` (element weights from masks and site scales), as in the
  reference implementation.
* ``"mmps"`` (Rozet et al., 2024, "Learning diffusion priors from observations by expectation
  maximization", arXiv:2405.13712): :math:`\mathrm{Cov}[x \mid x_t] \approx (\sigma^2/\mu)\,
  \partial \hat{x} / \partial x_t` and :math:`p(y \mid x_t) \approx N(y \mid A(\hat{x}),
  \Sigma_y + A \mathrm{Cov} A^\top)` with :math:`A` linearised at :math:`\hat{x}`; the score is
  :math:`(\partial \hat{x}/\partial x_t)^\top A^\top u` with :math:`(\Sigma_y + A \mathrm{Cov}
  A^\top) u = y - A(\hat{x})` solved by conjugate gradient using only JVPs/VJPs
  (:mod:`numpyro_sda.linalg`). Exact for a Gaussian prior with linear Gaussian observations.

**Observed sites.** Every observed site of the user's model is viewed as a Gaussian
:math:`N(m_s(x), V_s)` of its observed values: ``Normal`` and ``MultivariateNormal`` (also
``LowRankMultivariateNormal``) sites exactly, through ``Independent``, ``ExpandedDistribution``
and ``MaskedDistribution`` wrappers (``obs_mask``, ``handlers.mask``; masked elements carry
no information) and site scales (a scale :math:`s` divides the variance). **Non-Gaussian sites**
(``Poisson``, ``StudentT`` with :math:`\nu > 2`, ``Bernoulli``, ``Binomial``, ``Gamma``,
``Laplace``, ...) are replaced by their *Gaussian moment match*
:math:`N(y \mid \mathbb{E}[y \mid x], \mathrm{Var}[y \mid x])` evaluated at :math:`\hat{x}`; the
mean carries the gradient, the variance is held fixed (``stop_gradient``) during each
evaluation. This is the moment-matching (Laplace-type) treatment of generalised-linear
observations; it is exact in the first two moments and becomes sharp as the counts grow. Sites
whose family has no finite mean and variance (``Cauchy``, ``StudentT`` with :math:`\nu \le 2`,
multivariate non-Gaussian families) raise a :class:`ValueError` naming the site. Noise
variances are always held fixed within an evaluation (heteroscedastic :math:`\Sigma_y(x)` is
evaluated at :math:`\hat{x}`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import Array
from numpyro import handlers

from numpyro_sda.linalg import conjugate_gradient
from numpyro_sda.sde import VPSDE

__all__ = ["GUIDANCES", "ObservationModel", "SiteInfo", "guided_eps"]

GUIDANCES = ("sda", "dps", "mmps")

_GAUSSIAN_MVN = (dist.MultivariateNormal, dist.LowRankMultivariateNormal)


@dataclass(frozen=True)
class SiteInfo:
    """Static structure of one observed site's Gaussian view.

    Attributes:
        name: site name. shape: observed value shape. kind: ``"diag"`` (element-wise variance)
        or ``"mvn"`` (covariance over the last axis). family: the distribution class name.
        exact: whether the site is Gaussian (otherwise moment-matched).
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    family: str
    exact: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _view(fn: Any, name: str) -> tuple[Array, Array, Array | None, str, str, bool]:
    """(mean, noise, mask, kind, family, exact) of one site distribution; noise is the
    element-wise variance (kind "diag") or the covariance matrices (kind "mvn"); mask is
    None or broadcastable to the site's batch shape."""
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    if isinstance(fn, dist.MaskedDistribution):
        mean, noise, mask, kind, family, exact = _view(fn.base_dist, name)
        m = fn._mask
        m = jnp.asarray(m, bool)
        mask = m if mask is None else (mask & m)
        return mean, noise, mask, kind, family, exact
    if isinstance(fn, dist.Independent):
        return _view(fn.base_dist, name)
    if isinstance(fn, dist.ExpandedDistribution):
        mean, noise, mask, kind, family, exact = _view(fn.base_dist, name)
        mean = jnp.broadcast_to(mean, shape)
        if kind == "diag":
            noise = jnp.broadcast_to(noise, shape)
        else:
            noise = jnp.broadcast_to(noise, shape + shape[-1:])
        return mean, noise, mask, kind, family, exact
    family = type(fn).__name__
    if isinstance(fn, dist.Normal):
        return (
            jnp.broadcast_to(fn.loc, shape),
            jnp.broadcast_to(fn.scale**2, shape),
            None, "diag", family, True,
        )
    if isinstance(fn, _GAUSSIAN_MVN):
        cov = fn.covariance_matrix
        return (
            jnp.broadcast_to(fn.loc, shape),
            jnp.broadcast_to(cov, shape + shape[-1:]),
            None, "mvn", family, True,
        )
    if fn.event_shape != ():
        raise ValueError(
            f"observed site {name!r}: {family} with event shape {tuple(fn.event_shape)} is not "
            "supported by SDA guidance (supported: Normal, MultivariateNormal, "
            "LowRankMultivariateNormal, and univariate families with a finite mean and variance, "
            "which are moment-matched)"
        )
    try:
        mean, var = fn.mean, fn.variance
    except NotImplementedError as err:
        raise ValueError(
            f"observed site {name!r}: the {family} family has no mean/variance, so SDA cannot "
            "moment-match it; supported: Normal, MultivariateNormal and univariate families "
            "with a finite mean and variance"
        ) from err
    return (
        jnp.broadcast_to(mean, shape), jnp.broadcast_to(var, shape), None, "diag", family, False,
    )


class ObservationModel:
    r"""The observed sites of a traced model as Gaussian views :math:`N(m_s(x), V_s)`.

    Built from a :class:`~numpyro_sda.tracing.TracedModel`; every method is a pure JAX
    function of ONE trajectory ``x`` (and optional values ``params`` of other latent sites).

    Raises:
        ValueError: when an observed site's family is unsupported (no finite mean/variance).
    """

    def __init__(self, traced: Any, params: dict | None = None) -> None:
        self.traced = traced
        x0 = jnp.zeros(traced.event_shape, jnp.float32)
        infos = []
        tr = self._trace(x0, params)
        for name in traced.observed:
            mean, noise, _, kind, family, exact = _view(tr[name]["fn"], name)
            y = jnp.asarray(traced.observed[name])
            if tuple(y.shape) != tuple(mean.shape):
                if y.ndim > mean.ndim:
                    raise ValueError(
                        f"observed site {name!r}: observations have shape {tuple(y.shape)} "
                        f"but the model's distribution at that site has shape {mean.shape}"
                    )
            if not exact:
                finite = bool(jnp.all(jnp.isfinite(noise))) and bool(jnp.all(jnp.isfinite(mean)))
                if not finite:
                    raise ValueError(
                        f"observed site {name!r}: the {family} family has an infinite or "
                        "undefined mean or variance here, so SDA cannot moment-match it; use a "
                        "family with finite moments (e.g. StudentT with df > 2)"
                    )
            infos.append(SiteInfo(name, tuple(mean.shape), kind, family, exact))
        self.sites: tuple[SiteInfo, ...] = tuple(infos)
        self.y: dict[str, Array] = {
            s.name: jnp.broadcast_to(jnp.asarray(traced.observed[s.name], jnp.float32), s.shape)
            for s in self.sites
        }

    def _trace(self, x: Array, params: dict | None):
        data = {self.traced.prior_name: x}
        if params:
            data.update(params)
        model = handlers.substitute(handlers.seed(self.traced.model, rng_seed=0), data=data)
        return handlers.trace(model).get_trace(*self.traced.args, **self.traced.kwargs)

    def _views(self, x: Array, params: dict | None) -> dict[str, tuple]:
        tr = self._trace(x, params)
        return {name: _site_view(tr[name], name) for name in self.traced.observed}

    def predict(self, x: Array, params: dict | None = None) -> dict[str, tuple[Array, Array, Array]]:
        """Per site ``(mean, noise, weight)`` given trajectory ``x``.

        ``weight`` is the site scale times the mask (0 for masked elements), with the site's
        shape for ``"diag"`` sites and its batch shape for ``"mvn"`` sites; ``noise`` is held
        fixed (``stop_gradient``).
        """
        views = self._views(x, params)
        out = {}
        for s in self.sites:
            mean, noise, mask, scale = views[s.name]
            wshape = s.shape if s.kind == "diag" else s.shape[:-1]
            w = jnp.ones(wshape, mean.dtype)
            if mask is not None:
                m = jnp.asarray(mask, bool)
                if s.kind == "diag":
                    m = jnp.reshape(m, m.shape + (1,) * (len(wshape) - m.ndim))
                w = w * jnp.broadcast_to(m, wshape)
            if scale is not None:
                sc = jnp.asarray(scale, mean.dtype)
                if s.kind == "diag" and sc.ndim:
                    sc = jnp.reshape(sc, sc.shape + (1,) * (len(wshape) - sc.ndim))
                w = w * jnp.broadcast_to(sc, wshape)
            out[s.name] = (mean, jax.lax.stop_gradient(noise), w)
        return out

    # flat vector helpers (all sites concatenated) ------------------------------------------
    def flat_mean(self, x: Array, params: dict | None = None) -> tuple[Array, tuple]:
        """Concatenated flattened means, and the per-site ``(noise, weight)`` as auxiliary."""
        pred = self.predict(x, params)
        mean = jnp.concatenate([jnp.ravel(pred[s.name][0]) for s in self.sites])
        aux = tuple((pred[s.name][1], pred[s.name][2]) for s in self.sites)
        return mean, aux

    def flat_y(self) -> Array:
        return jnp.concatenate([jnp.ravel(self.y[s.name]) for s in self.sites])

    def flat_weight(self, aux: tuple) -> Array:
        ws = []
        for s, (_, w) in zip(self.sites, aux, strict=True):
            if s.kind == "mvn":
                w = jnp.broadcast_to(w[..., None], s.shape)
            ws.append(jnp.ravel(w))
        return jnp.concatenate(ws)

    def noise_matvec(self, aux: tuple, v: Array) -> Array:
        """:math:`\\Sigma_y v` on the flat observation vector (unweighted)."""
        out, i = [], 0
        for s, (noise, _) in zip(self.sites, aux, strict=True):
            vs = v[i : i + s.size].reshape(s.shape)
            i += s.size
            if s.kind == "diag":
                out.append(jnp.ravel(noise * vs))
            else:
                out.append(jnp.ravel(jnp.einsum("...ij,...j->...i", noise, vs)))
        return jnp.concatenate(out)

    def inflated_log_likelihood(self, x: Array, c: Array, params: dict | None = None) -> Array:
        r""":math:`\sum_s \log N(y_s \mid m_s(x), V_s + c I)` up to constants, masked/scaled."""
        pred = self.predict(x, params)
        total = jnp.zeros((), x.dtype)
        for s in self.sites:
            mean, noise, w = pred[s.name]
            r = self.y[s.name] - mean
            if s.kind == "diag":
                total = total - 0.5 * jnp.sum(w * r**2 / (noise + c))
            else:
                k = s.shape[-1]
                cov = noise + c * jnp.eye(k, dtype=noise.dtype)
                chol = jnp.linalg.cholesky(cov)
                z = jax.scipy.linalg.solve_triangular(chol, r[..., None], lower=True)[..., 0]
                total = total - 0.5 * jnp.sum(w * jnp.sum(z**2, axis=-1))
        return total

    def squared_residual(self, x: Array, params: dict | None = None) -> Array:
        r""":math:`\|y - m(x)\|^2` with mask/scale weights (the DPS error)."""
        pred = self.predict(x, params)
        total = jnp.zeros((), x.dtype)
        for s in self.sites:
            mean, _, w = pred[s.name]
            r2 = (self.y[s.name] - mean) ** 2
            if s.kind == "mvn":
                r2 = jnp.sum(r2, axis=-1)
            total = total + jnp.sum(w * r2)
        return total


def _site_view(site: dict, name: str) -> tuple:
    mean, noise, mask, _, _, _ = _view(site["fn"], name)
    smask = site.get("mask")
    if smask is not None:
        smask = jnp.asarray(smask, bool)
        mask = smask if mask is None else (mask & smask)
    return mean, noise, mask, site.get("scale")


def guided_eps(
    eps: Callable[[Array, Array], Array],
    sde: VPSDE,
    obs: ObservationModel,
    guidance: str = "sda",
    *,
    gamma: float = 3e-2,
    zeta: float = 1.0,
    cg_maxiter: int = 8,
    cg_tol: float = 1e-6,
    params: dict | None = None,
) -> Callable[[Array, Array], Array]:
    r"""The guided noise predictor :math:`\varepsilon_y(x_t, t)` on ONE trajectory.

    Args:
        eps: the prior's noise predictor over one trajectory.
        sde: its noise schedule.
        obs: the observed sites (:class:`ObservationModel`).
        guidance: ``"sda"``, ``"dps"`` or ``"mmps"`` (see the module docstring).
        gamma: the ``"sda"`` variance inflation :math:`\gamma`.
        zeta: the ``"dps"`` step size :math:`\zeta`.
        cg_maxiter, cg_tol: conjugate-gradient settings of ``"mmps"``.
        params: values of other latent sites of the model (fixed).
    """
    if guidance not in GUIDANCES:
        raise ValueError(f"unknown guidance {guidance!r}; expected one of {GUIDANCES}")

    if guidance == "sda":

        def eps_y(x: Array, t: Array) -> Array:
            mu, sigma = sde.mu(t), sde.sigma(t)
            c = gamma * (sigma / mu) ** 2

            def log_lik(x):
                e = eps(x, t)
                xh = (x - sigma * e) / mu
                return obs.inflated_log_likelihood(xh, c, params), e

            g, e = jax.grad(log_lik, has_aux=True)(x)
            return e - sigma * g

        return eps_y

    if guidance == "dps":

        def eps_y(x: Array, t: Array) -> Array:
            mu, sigma = sde.mu(t), sde.sigma(t)

            def err(x):
                e = eps(x, t)
                xh = (x - sigma * e) / mu
                return obs.squared_residual(xh, params), e

            (err2, e), g = jax.value_and_grad(err, has_aux=True)(x)
            score = -zeta * g / jnp.sqrt(jnp.maximum(err2, jnp.finfo(x.dtype).tiny))
            return e - sigma * score

        return eps_y

    y = obs.flat_y()

    def eps_y(x: Array, t: Array) -> Array:
        mu, sigma = sde.mu(t), sde.sigma(t)

        def denoise(x):
            e = eps(x, t)
            return (x - sigma * e) / mu, e

        xh, denoise_vjp, e = jax.vjp(denoise, x, has_aux=True)
        xh = jax.lax.stop_gradient(xh)
        (m, aux) = obs.flat_mean(xh, params)
        a_lin = jax.linearize(lambda z: obs.flat_mean(z, params)[0], xh)[1]
        a_t = jax.linear_transpose(a_lin, xh)
        w = obs.flat_weight(aux)
        d = (w > 0).astype(x.dtype)
        w_safe = jnp.where(w > 0, w, 1.0)

        def cov_x(v):
            return (sigma**2 / mu) * denoise_vjp(v)[0]

        def matvec(u):
            du = d * u
            noise = obs.noise_matvec(aux, du) / w_safe
            return d * (noise + a_lin(cov_x(a_t(du)[0]))) + (1.0 - d) * u

        def noise_curvature(u):
            du = d * u
            return jnp.vdot(du, obs.noise_matvec(aux, du) / w_safe) + jnp.vdot(u - du, u - du)

        r = d * (y - m)
        u = conjugate_gradient(matvec, r, maxiter=cg_maxiter, tol=cg_tol, floor=noise_curvature)
        score = denoise_vjp(a_t(d * u)[0])[0]
        return e - sigma * score

    return eps_y
