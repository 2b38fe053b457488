r"""The observed sites of a user's NumPyro model, as functions of the trajectory.

Every inference method of this library needs the observation model :math:`p(y \mid x)` written
by the user as ordinary ``numpyro.sample(..., obs=y)`` sites. This module is the one place that
knows how to read them:

* :func:`trace_given` re-runs the model under :func:`numpyro.handlers.substitute` with the
  trajectory (and other latent values) fixed, so each observed site's distribution becomes a pure
  JAX function of :math:`x` that can be differentiated, vmapped and jitted;
* :func:`site_log_prob` / :func:`elementwise_log_prob` give the (masked, scaled) log-densities,
  looking through ``Independent`` so that an observation written as one event still splits into
  its scalar elements;
* :func:`unwrap` looks through numpyro's ``MaskedDistribution`` (``obs_mask``,
  ``handlers.mask``), ``Independent`` (``.to_event``) and ``ExpandedDistribution`` wrappers and
  returns the base family with the combined element mask;
* :func:`gaussian_view` views a site as a Gaussian :math:`N(m_s(x), V_s)`: ``Normal`` and
  ``MultivariateNormal`` / ``LowRankMultivariateNormal`` exactly, every univariate family with a
  finite mean and variance by its *Gaussian moment match*
  :math:`N(y \mid \mathbb{E}[y \mid x], \mathrm{Var}[y \mid x])` (a Laplace-type treatment of
  generalised-linear observations, exact in the first two moments);
* :class:`ObservationModel` stacks all observed sites into one flat observation vector with
  element weights (mask times site scale; a scale :math:`s` divides the variance) — what the
  guidances of :mod:`numpyro_sda.guidance` and the Gaussian baselines consume;
* :func:`placeholder_prior` stands in zeros for the trajectory site while tracing, so that an
  expensive prior (a reverse diffusion) is never sampled just to learn shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import Array
from numpyro import handlers

if TYPE_CHECKING:  # pragma: no cover
    from numpyro_sda.tracing import TracedModel

__all__ = [
    "trace_given",
    "site_log_prob",
    "elementwise_log_prob",
    "site_weight",
    "unwrap",
    "Unwrapped",
    "gaussian_view",
    "GaussianView",
    "SiteInfo",
    "ObservationModel",
    "placeholder_prior",
]

_GAUSSIAN_MVN = (dist.MultivariateNormal, dist.LowRankMultivariateNormal)


# ----------------------------------------------------------------------------- re-tracing
def trace_given(model: Callable, args: tuple, kwargs: dict, data: dict | None, seed: int = 0):
    """Trace ``model(*args, **kwargs)`` with the sites in ``data`` substituted (fixed seed)."""
    m = handlers.seed(model, rng_seed=seed)
    if data:
        m = handlers.substitute(m, data=data)
    return handlers.trace(m).get_trace(*args, **kwargs)


def placeholder_prior(prior_types: tuple[type, ...]) -> Callable[[dict], Array | None]:
    """A ``substitute_fn`` that fills unobserved sites of ``prior_types`` with zeros."""

    def substitute_fn(msg: dict) -> Array | None:
        fn = msg.get("fn")
        if msg.get("type") == "sample" and isinstance(fn, prior_types) and msg.get("value") is None:
            return jnp.zeros(fn.shape(), jnp.float32)
        return None

    return substitute_fn


# ----------------------------------------------------------------------------- log-densities
def _expand_trailing(m: Array, ndim: int) -> Array:
    m = jnp.asarray(m)
    return m.reshape(m.shape + (1,) * max(0, ndim - m.ndim))


def site_log_prob(site: dict) -> Array:
    """Log-density of a traced sample site at its value, masked (zeros) and scaled."""
    lp = site["fn"].log_prob(site["value"])
    if site.get("mask") is not None:
        lp = jnp.where(site["mask"], lp, 0.0)
    if site.get("scale") is not None:
        lp = site["scale"] * lp
    return lp


def _elementwise(fn: dist.Distribution, value: Array) -> Array:
    if isinstance(fn, dist.Independent):
        return _elementwise(fn.base_dist, value)
    if isinstance(fn, dist.MaskedDistribution):
        lp = _elementwise(fn.base_dist, value)
        m = fn._mask
        if isinstance(m, bool):
            return lp if m else jnp.zeros_like(lp)
        m = _expand_trailing(m, len(fn.batch_shape))
        return jnp.where(_expand_trailing(m, lp.ndim), lp, 0.0)
    if isinstance(fn, dist.ExpandedDistribution):
        shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
        lp = _elementwise(fn.base_dist, value)
        return jnp.broadcast_to(lp, jnp.broadcast_shapes(lp.shape, shape[: lp.ndim] or ()))
    return fn.log_prob(value)


def elementwise_log_prob(site: dict) -> Array:
    """Element-wise log-density of a traced site (``.to_event`` dimensions split into elements),
    with the site's mask and scale applied; its sum is :func:`site_log_prob`'s."""
    lp = _elementwise(site["fn"], site["value"])
    if site.get("mask") is not None:
        lp = jnp.where(_expand_trailing(site["mask"], lp.ndim), lp, 0.0)
    if site.get("scale") is not None:
        lp = _expand_trailing(site["scale"], lp.ndim) * lp
    return lp


# ----------------------------------------------------------------------------- unwrapping
@dataclass(frozen=True)
class Unwrapped:
    """A site distribution with its wrappers removed.

    Attributes:
        base: the innermost distribution (e.g. ``Normal``); its shape broadcasts (right-aligned)
            to ``shape``.
        shape: the full shape ``batch_shape + event_shape`` of the site.
        mask: ``None`` (every element observed) or a boolean array of shape ``shape``
            combining ``obs_mask``, ``handlers.mask`` and every ``MaskedDistribution`` layer.
    """

    base: Any
    shape: tuple[int, ...]
    mask: Any


def _to_full(a: Any, batch_shape: tuple[int, ...], event_ndim: int) -> Array:
    """Broadcast a per-batch-element array (right-aligned to ``batch_shape``) and add the
    trailing event axes: the array then broadcasts right-aligned to ``batch + event``."""
    a = jnp.broadcast_to(jnp.asarray(a), tuple(batch_shape))
    return a.reshape(a.shape + (1,) * event_ndim)


def unwrap(fn: dist.Distribution, site_mask: Any = None) -> Unwrapped:
    """Look through ``MaskedDistribution``, ``Independent`` and ``ExpandedDistribution``.

    ``site_mask`` is the trace's ``site["mask"]`` (from ``handlers.mask``), aligned with ``fn``'s
    batch shape. Every mask is returned combined, at the site's full shape.
    """
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    mask = None
    if site_mask is not None:
        mask = jnp.broadcast_to(
            _to_full(jnp.asarray(site_mask, bool), fn.batch_shape, len(fn.event_shape)), shape)
    d = fn
    while True:
        if isinstance(d, dist.MaskedDistribution):
            m = d._mask  # numpyro keeps the mask of obs_mask / handlers.mask here
            m = jnp.broadcast_to(_to_full(jnp.asarray(m, bool), d.batch_shape,
                                          len(d.event_shape)), shape)
            mask = m if mask is None else (mask & m)
            d = d.base_dist
        elif isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
            d = d.base_dist
        else:
            return Unwrapped(d, shape, mask)


def site_weight(fn: dist.Distribution, mask: Any, scale: Any, dtype=jnp.float32) -> Array:
    """Element weights ``scale * mask`` at the full shape of ``fn`` (0 for masked elements).

    ``mask`` is at the full shape (see :func:`unwrap`); ``scale`` is the trace's
    ``site["scale"]``, aligned with ``fn``'s batch shape.
    """
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    w = jnp.ones(shape, dtype)
    if mask is not None:
        w = w * mask
    if scale is not None:
        w = w * _to_full(jnp.asarray(scale, dtype), fn.batch_shape, len(fn.event_shape))
    return w


# ----------------------------------------------------------------------------- Gaussian view
@dataclass(frozen=True)
class GaussianView:
    """:math:`N(m, V)` view of one observed site.

    Attributes:
        mean: the site's mean, full shape.
        noise: element-wise variances (``kind == "diag"``, full shape) or covariance matrices
            over the last axis (``kind == "mvn"``, shape ``shape + shape[-1:]``).
        mask: as in :class:`Unwrapped`.
        kind: ``"diag"`` or ``"mvn"``. family: the base distribution's class name.
        exact: whether the site is Gaussian (otherwise moment-matched).
    """

    mean: Array
    noise: Array
    mask: Any
    kind: str
    family: str
    exact: bool


def gaussian_view(fn: dist.Distribution, name: str, site_mask: Any = None) -> GaussianView:
    """The Gaussian (exact or moment-matched) view of site ``name``'s distribution ``fn``.

    Raises:
        ValueError: for multivariate non-Gaussian families and families without a finite mean
            and variance (``Cauchy``, ``StudentT`` with ``df <= 2``), naming the site.
    """
    u = unwrap(fn, site_mask)
    d, shape = u.base, u.shape
    family = type(d).__name__
    if isinstance(d, dist.Normal):
        return GaussianView(jnp.broadcast_to(d.loc, shape), jnp.broadcast_to(d.scale**2, shape),
                            u.mask, "diag", family, True)
    if isinstance(d, _GAUSSIAN_MVN):
        return GaussianView(jnp.broadcast_to(d.loc, shape),
                            jnp.broadcast_to(d.covariance_matrix, shape + shape[-1:]),
                            u.mask, "mvn", family, True)
    if d.event_shape != ():
        raise ValueError(
            f"observed site {name!r}: {family} with event shape {tuple(d.event_shape)} is not "
            "supported by SDA guidance (supported: Normal, MultivariateNormal, "
            "LowRankMultivariateNormal, and univariate families with a finite mean and variance, "
            "which are moment-matched)"
        )
    try:
        mean, var = d.mean, d.variance
    except NotImplementedError as err:
        raise ValueError(
            f"observed site {name!r}: the {family} family has no mean/variance, so SDA cannot "
            "moment-match it; supported: Normal, MultivariateNormal and univariate families "
            "with a finite mean and variance"
        ) from err
    return GaussianView(jnp.broadcast_to(mean, shape), jnp.broadcast_to(var, shape), u.mask,
                        "diag", family, False)


def normal_view(fn: dist.Distribution, name: str, method: str,
                site_mask: Any = None) -> tuple[Array, Array, Array]:
    """``(loc, scale, mask)`` of a (masked, independent, expanded) ``Normal`` site, full shape.

    Raises:
        TypeError: when the site is not a ``Normal`` (``method`` names who needs it).
    """
    u = unwrap(fn, site_mask)
    if not isinstance(u.base, dist.Normal):
        raise TypeError(
            f"observed site {name!r} has a {type(fn).__name__} distribution; {method} needs "
            "Gaussian observation sites, dist.Normal(mean(x), scale) (optionally .to_event or "
            "masked)"
        )
    shape = u.shape
    mask = jnp.ones(shape, bool) if u.mask is None else u.mask
    return jnp.broadcast_to(u.base.loc, shape), jnp.broadcast_to(u.base.scale, shape), mask


# ----------------------------------------------------------------------------- all sites
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


class ObservationModel:
    r"""The observed sites of a traced model as one flat Gaussian observation :math:`N(m(x), V)`.

    Built from a :class:`~numpyro_sda.tracing.TracedModel`; every method is a pure JAX function
    of ONE trajectory ``x`` (and optional values ``params`` of other latent sites). The flat
    vector concatenates the flattened sites in model order; ``weight`` is the element weight
    (site scale times mask, 0 where masked), which divides the noise variance.

    Raises:
        ValueError: when an observed site's family is unsupported (no finite mean/variance), or
            when the observations select no element at all.
    """

    def __init__(self, traced: TracedModel, params: dict | None = None) -> None:
        self.traced = traced
        x0 = jnp.zeros(traced.event_shape, jnp.float32)
        tr = self._trace(x0, params or traced.latent_values or None)
        infos = []
        for name in traced.observed:
            view = gaussian_view(tr[name]["fn"], name, tr[name].get("mask"))
            if not view.exact:
                finite = bool(jnp.all(jnp.isfinite(view.noise))) and bool(
                    jnp.all(jnp.isfinite(view.mean)))
                if not finite:
                    raise ValueError(
                        f"observed site {name!r}: the {view.family} family has an infinite or "
                        "undefined mean or variance here, so SDA cannot moment-match it; use a "
                        "family with finite moments (e.g. StudentT with df > 2)"
                    )
            infos.append(SiteInfo(name, tuple(view.mean.shape), view.kind, view.family,
                                  view.exact))
        self.sites: tuple[SiteInfo, ...] = tuple(infos)
        self.size = sum(s.size for s in self.sites)
        if self.size == 0:
            raise ValueError(
                f"the observed sites {list(traced.observed)} select no element at all (empty "
                "observations, e.g. an empty slice of the trajectory): there is nothing to "
                "assimilate"
            )
        self.y: dict[str, Array] = {
            s.name: jnp.broadcast_to(jnp.asarray(traced.observed[s.name], jnp.float32), s.shape)
            for s in self.sites
        }

    def rebind(self, traced: TracedModel) -> ObservationModel:
        """The same sites with the arguments and observed values of ``traced`` (a re-trace of
        the same model with arrays of the same shapes); traceable, no checks."""
        new = object.__new__(ObservationModel)
        new.__dict__.update(self.__dict__)
        new.traced = traced
        new.y = {s.name: jnp.broadcast_to(jnp.asarray(traced.observed[s.name], jnp.float32),
                                          s.shape) for s in self.sites}
        return new

    def _trace(self, x: Array, params: dict | None):
        data = {self.traced.prior_name: x}
        if params:
            data.update(params)
        return trace_given(self.traced.model, self.traced.args, self.traced.kwargs, data)

    def predict(self, x: Array, params: dict | None = None) -> dict[str, tuple[Array, Array, Array]]:
        """Per site ``(mean, noise, weight)`` given trajectory ``x``.

        ``weight`` has the site's shape for ``"diag"`` sites and its batch shape for ``"mvn"``
        sites; ``noise`` is held fixed (``stop_gradient``): heteroscedastic noise is evaluated at
        ``x`` but not differentiated.
        """
        tr = self._trace(x, params)
        out = {}
        for s in self.sites:
            site = tr[s.name]
            view = gaussian_view(site["fn"], s.name, site.get("mask"))
            w = site_weight(site["fn"], view.mask, site.get("scale"), view.mean.dtype)
            if s.kind == "mvn":  # one weight per event (the mask is constant over it)
                w = w[..., 0]
            out[s.name] = (view.mean, jax.lax.stop_gradient(view.noise), w)
        return out

    # flat vector helpers (all sites concatenated) ------------------------------------------
    def flat_mean(self, x: Array, params: dict | None = None) -> tuple[Array, tuple]:
        """Concatenated flattened means, and the per-site ``(noise, weight)`` as auxiliary."""
        pred = self.predict(x, params)
        mean = jnp.concatenate([jnp.ravel(pred[s.name][0]) for s in self.sites])
        aux = tuple((pred[s.name][1], pred[s.name][2]) for s in self.sites)
        return mean, aux

    def flat_y(self) -> Array:
        """The observed values, flattened and concatenated."""
        return jnp.concatenate([jnp.ravel(self.y[s.name]) for s in self.sites])

    def flat_weight(self, aux: tuple) -> Array:
        """Element weights on the flat vector (``mvn`` site weights repeated over the event)."""
        ws = []
        for s, (_, w) in zip(self.sites, aux, strict=True):
            if s.kind == "mvn":
                w = jnp.broadcast_to(w[..., None], s.shape)
            ws.append(jnp.ravel(w))
        return jnp.concatenate(ws)

    def noise_matvec(self, aux: tuple, v: Array) -> Array:
        r""":math:`\Sigma_y v` on the flat observation vector (unweighted)."""
        out, i = [], 0
        for s, (noise, _) in zip(self.sites, aux, strict=True):
            vs = v[i : i + s.size].reshape(s.shape)
            i += s.size
            if s.kind == "diag":
                out.append(jnp.ravel(noise * vs))
            else:
                out.append(jnp.ravel(jnp.einsum("...ij,...j->...i", noise, vs)))
        return jnp.concatenate(out)

    def noise_matrix(self, aux: tuple) -> Array:
        r"""The dense :math:`\Sigma_y` over the flat vector, ``(m, m)`` (for small ``m``)."""
        blocks = []
        for s, (noise, _) in zip(self.sites, aux, strict=True):
            if s.kind == "diag":
                blocks.append(jnp.diag(jnp.ravel(noise)))
            else:
                mats = noise.reshape(-1, s.shape[-1], s.shape[-1])
                blocks.append(jax.scipy.linalg.block_diag(*mats))
        return jax.scipy.linalg.block_diag(*blocks)

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
