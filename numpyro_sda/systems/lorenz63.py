r"""The noisy Lorenz-63 system of Rozet & Louppe (2023), Section 5.1.

.. math:: \dot{x} = \sigma (y - x), \quad \dot{y} = x (\rho - z) - y, \quad \dot{z} = x y - \beta z,

with :math:`\sigma = 10`, :math:`\rho = 28`, :math:`\beta = 8/3` (Lorenz, 1963), integrated by one
fourth-order Runge–Kutta step of :math:`\Delta t = 0.025` per transition, plus Gaussian transition
noise of standard deviation :math:`\sqrt{\Delta t}`. Initial states follow
:math:`\mathcal{N}((0, 0, 25), [[64, 50, 0], [50, 81, 0], [0, 0, 75]])`; states are normalised by
mean :math:`(0, 0, 25)` and standard deviation :math:`(8, 9, 8.6)` (arXiv:2306.10574, App. C).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array

from numpyro_sda.systems.base import DynamicalSystem, check_length, check_positive
from numpyro_sda.systems.integrators import rk4

__all__ = ["Lorenz63"]


class Lorenz63(DynamicalSystem):
    """Noisy Lorenz-63 (the paper's setting by default).

    Args:
        sigma, rho, beta: the Lorenz parameters.
        dt: time between saved states.
        noise_std: transition noise std (physical units); default :math:`\\sqrt{\\Delta t}`; 0 for
            the deterministic system.
        substeps: RK4 steps per transition (1 in the paper).
    """

    state_shape = (3,)

    def __init__(
        self,
        sigma: float = 10.0,
        rho: float = 28.0,
        beta: float = 8.0 / 3.0,
        dt: float = 0.025,
        noise_std: float | None = None,
        substeps: int = 1,
    ) -> None:
        self.sigma, self.rho, self.beta = float(sigma), float(rho), float(beta)
        self.dt = check_positive("dt", dt)
        self.substeps = check_length("substeps", substeps, 1)
        self.noise_std = float(np.sqrt(self.dt)) if noise_std is None else float(noise_std)
        if self.noise_std < 0 or not np.isfinite(self.noise_std):
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        self.mean = np.array([0.0, 0.0, 25.0], np.float32)
        self.std = np.array([8.0, 9.0, 8.6], np.float32)

    def vector_field(self, x: Array) -> Array:
        """:math:`\\dot{x}` of the Lorenz-63 ODE."""
        a, b, c = x[..., 0], x[..., 1], x[..., 2]
        return jnp.stack(
            [self.sigma * (b - a), a * (self.rho - c) - b, a * b - self.beta * c], axis=-1
        )

    def initial_distribution(self) -> dist.Distribution:
        loc = jnp.array([0.0, 0.0, 25.0])
        cov = jnp.array([[64.0, 50.0, 0.0], [50.0, 81.0, 0.0], [0.0, 0.0, 75.0]])
        return dist.MultivariateNormal(loc, cov)

    def step(self, x: Array) -> Array:
        return rk4(self.vector_field, x, self.dt, self.substeps)

    def __hash__(self) -> int:
        return hash((type(self), self.sigma, self.rho, self.beta, self.dt, self.noise_std,
                     self.substeps))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and hash(other) == hash(self)
