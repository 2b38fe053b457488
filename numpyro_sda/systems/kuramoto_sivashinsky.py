r"""The 1-D Kuramoto–Sivashinsky equation on a periodic domain (exponax solver).

.. math:: \partial_t u + \tfrac{1}{2} \partial_x (u^2) + \partial_x^2 u + \partial_x^4 u = 0,
          \qquad x \in [0, L), \ u(x + L) = u(x),

the "fluid" (conservative) form of Kuramoto (1978) and Sivashinsky (1977), integrated by
exponax's pseudo-spectral exponential time-differencing Runge–Kutta stepper
(``exponax.stepper.KuramotoSivashinskyConservative``, ETDRK4, 2/3 de-aliasing; Cox & Matthews
2002, Kassam & Trefethen 2005).

Chosen setting (the common chaotic benchmark of the chaotic-dynamics and data-assimilation /
machine-learning literature: Cvitanović, Davidchack & Siminos 2010; Pathak et al. 2018; Vlachas
et al. 2020): :math:`L = 22`, :math:`N = 64` grid points, :math:`\Delta t = 0.25` between saved
states, integrated internally by two ETDRK4 steps of 0.125 (the one-interval error against a
100-sub-step reference is about 1e-5, against 1e-3 for one ETDRK2 step). At :math:`L = 22` the
dynamics are low-dimensional but chaotic (largest Lyapunov exponent about 0.043, i.e. a Lyapunov
time of about 23 time units or 93 saved states), small enough for particle baselines and rich
enough for assimilation. The conservative form is used (rather than the combustion form
``exponax.stepper.KuramotoSivashinsky``, :math:`u_t + \tfrac12 u_x^2 + \dots`, of which it is the
spatial derivative) because it is the classic benchmark form and it conserves the spatial mean of
:math:`u`: the combustion form's mean drifts without bound, which would break fixed normalisation
statistics.

The state has shape ``(1, N)`` (channel first, exponax's convention). Initial states are drawn
from the climatological Gaussian :math:`\mathcal{N}(0, s^2 I)` (the per-point attractor statistics
below); :meth:`KuramotoSivashinsky.simulate` projects each initial state onto zero spatial mean
(the mean is an invariant of the equation, and a non-zero one is a Galilean drift) and burn-in then
spins it onto the attractor (recommended ``burn_in >= 400`` states, 100 time units).

Normalisation statistics: mean 0 (exact by the symmetry :math:`u(x) \to -u(-x)` and the
conserved zero mean), standard deviation 1.19, measured over 16 x 3600 states after 100 time
units of burn-in and checked against a fresh simulation by ``tests/test_pde_systems.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array

from numpyro_sda.systems.base import DynamicalSystem, check_length, check_positive

__all__ = ["KuramotoSivashinsky"]

# Attractor standard deviation of u for (L, N) = (22, 64) (see the module docstring).
_STD = {(22.0, 64): 1.19}


class KuramotoSivashinsky(DynamicalSystem):
    """Kuramoto–Sivashinsky on :math:`[0, L)` with ``num_points`` grid points.

    Args:
        domain_length: :math:`L` (22 by default).
        num_points: grid points :math:`N` (64 by default); ``state_shape = (1, N)``.
        dt: time between saved states (0.25).
        substeps: internal ETDRK steps per saved interval (2).
        order: ETDRK order of the exponax stepper (4).
        noise_std: Gaussian transition noise std (physical units); ``None``/0 = deterministic.
        std: override of the normalisation standard deviation (measured for the defaults).
    """

    def __init__(
        self,
        domain_length: float = 22.0,
        num_points: int = 64,
        dt: float = 0.25,
        substeps: int = 2,
        order: int = 4,
        noise_std: float | None = None,
        std: float | None = None,
    ) -> None:
        import exponax

        self.domain_length = check_positive("domain_length", domain_length)
        self.num_points = check_length("num_points", num_points, 8)
        self.dt = check_positive("dt", dt)
        self.substeps = check_length("substeps", substeps, 1)
        self.order = check_length("order", order, 1)
        if self.order > 4:
            raise ValueError(f"order must be in 1..4, got {order}")
        if noise_std is not None and (not np.isfinite(noise_std) or noise_std < 0):
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        self.noise_std = float(noise_std) if noise_std else None
        self.state_shape = (1, self.num_points)
        s = _STD.get((self.domain_length, self.num_points), 1.2) if std is None else std
        s = check_positive("std", s)
        self.mean = np.zeros((1, 1), np.float32)
        self.std = np.full((1, 1), s, np.float32)
        self._stepper = exponax.stepper.KuramotoSivashinskyConservative(
            1, self.domain_length, self.num_points, self.dt / self.substeps, order=self.order
        )

    @property
    def grid(self) -> np.ndarray:
        """Grid points :math:`x_j = j L / N`, shape ``(N,)``."""
        return np.arange(self.num_points) * (self.domain_length / self.num_points)

    def initial_distribution(self) -> dist.Distribution:
        """Climatological :math:`\\mathcal{N}(0, s^2)` independently at every grid point."""
        loc = jnp.broadcast_to(jnp.asarray(self.mean), self.state_shape)
        scale = jnp.broadcast_to(jnp.asarray(self.std), self.state_shape)
        return dist.Normal(loc, scale).to_event(2)

    def step(self, x: Array) -> Array:
        """Advance ONE state ``(1, N)`` (or a batch ``(..., 1, N)``) by ``dt``."""
        x = self._check_state(x)
        if x.ndim > 2:
            return jax.vmap(self.step)(x.reshape(-1, *self.state_shape)).reshape(x.shape)
        return jax.lax.fori_loop(0, self.substeps, lambda _, u: self._stepper(u), x)

    def _initial_states(self, key: Array, num: int) -> Array:
        x0 = super()._initial_states(key, num)
        return x0 - jnp.mean(x0, axis=-1, keepdims=True)  # the conserved mean is set to zero

    def __hash__(self) -> int:
        return hash((type(self), self.domain_length, self.num_points, self.dt, self.substeps,
                     self.order, self.noise_std, float(self.std.ravel()[0])))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and hash(other) == hash(self)
