r"""Diffusion posterior sampling (DPS).

Chung et al. (2023, "Diffusion posterior sampling for general noisy inverse problems",
arXiv:2209.14687, Algorithm 1) take a normalised gradient step on the data misfit of the
denoiser,

.. math:: \nabla_{x_t} \log p(y \mid x_t) \approx -\zeta\, \frac{\nabla_{x_t} \|r\|^2}{\|r\|},
          \qquad r = y - A(\hat{x}(x_t)),

with element weights from masks and site scales. It ignores :math:`\Sigma_y`; :math:`\zeta`
is a step size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import Array

from numpyro_sda.guidance.base import EpsFn, Guidance
from numpyro_sda.observation import ObservationModel
from numpyro_sda.sde import VPSDE

__all__ = ["DPS"]


@dataclass(frozen=True)
class DPS(Guidance):
    """DPS with step size ``zeta`` (> 0)."""

    zeta: float = 1.0
    name: ClassVar[str] = "dps"

    def __post_init__(self) -> None:
        if not self.zeta > 0:
            raise ValueError(f"zeta must be > 0, got {self.zeta}")

    def guided_eps(self, eps: EpsFn, sde: VPSDE, obs: ObservationModel,
                   params: dict | None = None) -> EpsFn:
        zeta = float(self.zeta)

        def eps_y(x: Array, t: Array) -> Array:
            sigma = sde.sigma(t)

            def err(x):
                e = eps(x, t)
                return obs.squared_residual(sde.denoise(x, t, e), params), e

            (err2, e), g = jax.value_and_grad(err, has_aux=True)(x)
            score = -zeta * g / jnp.sqrt(jnp.maximum(err2, jnp.finfo(x.dtype).tiny))
            return e - sigma * score

        return eps_y
