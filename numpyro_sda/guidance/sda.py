r"""The SDA guidance: Tweedie mean with an isotropic variance inflation.

Rozet & Louppe (2023, arXiv:2306.10574, Eq. 13) approximate

.. math:: p(y \mid x_t) \approx N\big(y \mid A(\hat{x}(x_t)),\ \Sigma_y + \gamma\,
          (\sigma(t)/\mu(t))^2 I\big),

differentiated through the denoiser :math:`\hat{x}`. The inflation :math:`\gamma (\sigma/\mu)^2`
stands in for :math:`A\, \mathrm{Cov}[x \mid x_t] A^\top`; it is large at high noise (weak
guidance) and vanishes as :math:`t \to 0`. One network evaluation and one backward pass per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
from jax import Array

from numpyro_sda.guidance.base import EpsFn, Guidance
from numpyro_sda.observation import ObservationModel
from numpyro_sda.sde import VPSDE

__all__ = ["SDAGuidance"]


@dataclass(frozen=True)
class SDAGuidance(Guidance):
    """SDA's variance-inflated Tweedie likelihood.

    Args:
        gamma: the inflation :math:`\\gamma \\ge 0` (the paper uses ``3e-2``).
    """

    gamma: float = 3e-2
    name: ClassVar[str] = "sda"

    def __post_init__(self) -> None:
        if not self.gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")

    def guided_eps(self, eps: EpsFn, sde: VPSDE, obs: ObservationModel,
                   params: dict | None = None) -> EpsFn:
        gamma = float(self.gamma)

        def eps_y(x: Array, t: Array) -> Array:
            mu, sigma = sde.mu(t), sde.sigma(t)
            c = gamma * (sigma / mu) ** 2

            def log_lik(x):
                e = eps(x, t)
                return obs.inflated_log_likelihood(sde.denoise(x, t, e), c, params), e

            g, e = jax.grad(log_lik, has_aux=True)(x)
            return e - sigma * g

        return eps_y
