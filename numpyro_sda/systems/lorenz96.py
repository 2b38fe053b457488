r"""The Lorenz-96 system (Lorenz, 1996) on a ring of :math:`n` variables.

.. math:: \dot{x}_i = (x_{i+1} - x_{i-2})\, x_{i-1} - x_i + F, \qquad i = 1, \dots, n
          \ (\text{indices modulo } n),

integrated by RK4 steps of ``dt / substeps`` per transition, plus optional Gaussian transition
noise. Defaults: :math:`n = 32`, :math:`F = 16` (as in the SDA reference implementation,
francois-rozet/sda), :math:`\Delta t = 0.05` between saved states (Lorenz's "6 hours") with two
RK4 sub-steps, noise std :math:`\sqrt{\Delta t} / 2`. The initial distribution is the
climatological Gaussian :math:`\mathcal{N}(m, s^2 I)` with the per-variable statistics of the
attractor (``mean``, ``std``, measured on long runs; checked by a test), the usual background of
data-assimilation experiments; simulation burns in from there onto the attractor.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array

from numpyro_sda.systems.base import DynamicalSystem, check_length, check_positive
from numpyro_sda.systems.integrators import rk4

__all__ = ["Lorenz96"]

# Attractor statistics for F = 16 (time and ensemble means over 256 x 4096 states, 8 x 0.05 apart
# after 2000 burn-in transitions; see tests/test_systems.py::test_lorenz96_statistics).
_STATS = {16.0: (3.1, 6.3), 8.0: (2.3, 3.65)}


class Lorenz96(DynamicalSystem):
    """Lorenz-96 with ``n`` variables and forcing ``F``.

    Args:
        n: number of variables (>= 4).
        F: forcing.
        dt: time between saved states.
        substeps: RK4 steps per transition.
        noise_std: transition noise std; default :math:`\\sqrt{\\Delta t}/2`; 0 = deterministic.
    """

    def __init__(
        self,
        n: int = 32,
        F: float = 16.0,
        dt: float = 0.05,
        substeps: int = 2,
        noise_std: float | None = None,
    ) -> None:
        self.n = check_length("n", n, 4)
        self.F = float(F)
        self.dt = check_positive("dt", dt)
        self.substeps = check_length("substeps", substeps, 1)
        self.noise_std = 0.5 * float(np.sqrt(self.dt)) if noise_std is None else float(noise_std)
        if self.noise_std < 0 or not np.isfinite(self.noise_std):
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        self.state_shape = (self.n,)
        m, s = _STATS.get(self.F, (0.25 * self.F, 0.4 * self.F))
        self.mean = np.full((self.n,), m, np.float32)
        self.std = np.full((self.n,), s, np.float32)

    def vector_field(self, x: Array) -> Array:
        """:math:`\\dot{x}` of the Lorenz-96 ODE (periodic in the last axis)."""
        return (jnp.roll(x, -1, -1) - jnp.roll(x, 2, -1)) * jnp.roll(x, 1, -1) - x + self.F

    def initial_distribution(self) -> dist.Distribution:
        return dist.Normal(jnp.asarray(self.mean), jnp.asarray(self.std)).to_event(1)

    def step(self, x: Array) -> Array:
        return rk4(self.vector_field, x, self.dt, self.substeps)

    def energy(self, x: Array) -> Array:
        """:math:`E = \\tfrac{1}{2} \\sum_i x_i^2`."""
        return 0.5 * jnp.sum(x**2, axis=-1)

    def __hash__(self) -> int:
        return hash((type(self), self.n, self.F, self.dt, self.substeps, self.noise_std))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and hash(other) == hash(self)
