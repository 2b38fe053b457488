r"""The guidance interface: a likelihood-score approximation turns a prior sampler into a
posterior sampler.

Sampling :math:`p(x \mid y)` by reverse diffusion needs the posterior score
:math:`\nabla_{x_t} \log p(x_t \mid y) = \nabla_{x_t} \log p(x_t) + \nabla_{x_t} \log p(y \mid
x_t)`. In noise-prediction form the guided predictor is

.. math:: \varepsilon_y(x_t, t) = \varepsilon(x_t, t) - \sigma(t)\, \nabla_{x_t} \log p(y \mid x_t)

(Rozet & Louppe, 2023, arXiv:2306.10574, Eq. 12). The likelihood :math:`p(y \mid x_t) = \int
p(y \mid x)\, p(x \mid x_t)\, dx` is intractable; every :class:`Guidance` approximates it with
Tweedie's denoiser :math:`\hat{x}(x_t) = \mathbb{E}[x \mid x_t] = (x_t - \sigma \varepsilon) /
\mu` (:meth:`numpyro_sda.sde.VPSDE.denoise`) and the Gaussian view :math:`y \sim N(A(x),
\Sigma_y)` of the observed sites (:class:`numpyro_sda.observation.ObservationModel`).

**Bounded denoiser.** :func:`bounded` projects the guided denoiser
:math:`\hat{x}_y = (x_t - \sigma \varepsilon_y)/\mu` onto a box :math:`[l, u]` (the range of the
training data, with a margin) and returns :math:`\varepsilon_y = (x_t - \mu\, \Pi(\hat{x}_y)) /
\sigma`. The exponential-integrator (DDIM) step :math:`x_s = \mu(s)\, \hat{x}_y + \sigma(s)\,
\varepsilon_y` is then a combination of a bounded point and the current state with weight
:math:`\sigma(s)/\sigma(t) < 1`, so no sequence of guidance steps can leave the box by more than the
diffusion noise: a strong or badly linearised likelihood gradient (a nonlinear operator far from
its data, a tiny noise) can no longer diverge. (:class:`numpyro_sda.SDA` also projects the final
draws, which the last step leaves within :math:`\sigma(0) = 10^{-3}` times a standard normal of
the box.) Inside the box the projection does nothing, so exact
guidance stays exact.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import jax.numpy as jnp
from jax import Array

from numpyro_sda.observation import ObservationModel
from numpyro_sda.sde import VPSDE

__all__ = ["Guidance", "EpsFn", "bounded"]

EpsFn = Callable[[Array, Array], Array]


class Guidance(ABC):
    """A likelihood-score approximation: maps a prior noise predictor to a guided one.

    Subclasses are frozen dataclasses holding their own settings and implement
    :meth:`guided_eps`. An instance is called as ``guidance(eps, sde, obs, params)``.
    """

    name: ClassVar[str] = "guidance"

    @abstractmethod
    def guided_eps(self, eps: EpsFn, sde: VPSDE, obs: ObservationModel,
                   params: dict | None = None) -> EpsFn:
        """The guided noise predictor :math:`\\varepsilon_y(x_t, t)` on ONE trajectory.

        Args:
            eps: the prior's noise predictor over one trajectory.
            sde: its noise schedule.
            obs: the observed sites.
            params: values of the model's other latent sites (held fixed).
        """

    def __call__(self, eps: EpsFn, sde: VPSDE, obs: ObservationModel,
                 params: dict | None = None) -> EpsFn:
        return self.guided_eps(eps, sde, obs, params)

    def describe(self) -> str:
        """A short label with the settings, for tables and logs."""
        import dataclasses

        fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields)
        return f"{type(self).__name__}({args})"


def bounded(eps_y: EpsFn, sde: VPSDE, lower: Any, upper: Any) -> EpsFn:
    r"""Project the guided denoiser onto the box ``[lower, upper]`` (see the module docstring).

    ``lower``/``upper`` broadcast against one trajectory (e.g. per-channel bounds of shape
    ``state_shape``).
    """
    lower = jnp.asarray(lower, jnp.float32)
    upper = jnp.asarray(upper, jnp.float32)

    def eps_b(x: Array, t: Array) -> Array:
        e = eps_y(x, t)
        mu, sigma = sde.mu(t), sde.sigma(t)
        xh = jnp.clip(sde.denoise(x, t, e), lower, upper)
        # a non-finite guided prediction falls back on the box centre rather than propagating
        xh = jnp.where(jnp.isfinite(xh), xh, 0.5 * (lower + upper))
        return ((x - mu * xh) / sigma).astype(x.dtype)

    return eps_b
