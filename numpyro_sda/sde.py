r"""Variance-preserving noise schedules and the perturbation kernel.

A clean trajectory :math:`x` is perturbed into

.. math:: x_t = \mu(t)\, x + \sigma(t)\, \varepsilon, \qquad \varepsilon \sim \mathcal{N}(0, I),
          \qquad t \in [0, 1],

with :math:`\sigma(t) = \sqrt{1 - \mu(t)^2 + \eta^2}` and one of three schedules for
:math:`\mu` (Rozet & Louppe, 2023, arXiv:2306.10574, Appendix C; :math:`\eta = 10^{-3}`):

* ``"cos"``: :math:`\mu(t) = \cos(\arccos(\sqrt{\eta})\, t)^2`,
* ``"lin"``: :math:`\mu(t) = 1 - (1 - \eta)\, t`,
* ``"exp"``: :math:`\mu(t) = \exp(\log(\eta)\, t^2)`.

A noise-prediction network :math:`\varepsilon_\phi(x_t, t)` relates to the score by
:math:`\nabla_{x_t} \log p(x_t) = -\varepsilon_\phi(x_t, t) / \sigma(t)`, and Tweedie's formula gives
the denoiser :math:`\hat{x}(x_t) = \mathbb{E}[x \mid x_t] = (x_t - \sigma(t)\,
\varepsilon_\phi(x_t, t)) / \mu(t)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["VPSDE", "SCHEDULES"]

SCHEDULES = ("cos", "lin", "exp")


@dataclass(frozen=True)
class VPSDE:
    """Variance-preserving perturbation kernel :math:`q(x_t \\mid x) = N(\\mu(t) x, \\sigma(t)^2 I)`.

    Args:
        alpha: the schedule of :math:`\\mu(t)`, one of ``"cos"`` (default), ``"lin"``, ``"exp"``.
        eta: the residual noise :math:`\\eta` at :math:`t = 0` (and :math:`\\mu(1) = \\eta` for
            ``"cos"``/``"lin"``/``"exp"``).
    """

    alpha: str = "cos"
    eta: float = 1e-3

    def __post_init__(self) -> None:
        if self.alpha not in SCHEDULES:
            raise ValueError(f"unknown alpha schedule {self.alpha!r}; expected one of {SCHEDULES}")
        if not (0.0 < self.eta < 1.0):
            raise ValueError(f"eta must lie in (0, 1), got {self.eta}")

    def mu(self, t: Array | float) -> Array:
        """The signal scale :math:`\\mu(t)`."""
        t = jnp.asarray(t, dtype=jnp.result_type(float))
        if self.alpha == "cos":
            return jnp.cos(math.acos(math.sqrt(self.eta)) * t) ** 2
        if self.alpha == "lin":
            return 1.0 - (1.0 - self.eta) * t
        return jnp.exp(math.log(self.eta) * t**2)

    def sigma(self, t: Array | float) -> Array:
        """The noise scale :math:`\\sigma(t) = \\sqrt{1 - \\mu(t)^2 + \\eta^2}`."""
        return jnp.sqrt(1.0 - self.mu(t) ** 2 + self.eta**2)

    def perturb(self, key: Array, x: Array, t: Array | float) -> tuple[Array, Array]:
        """Draw :math:`x_t = \\mu(t) x + \\sigma(t) \\varepsilon`; returns ``(x_t, eps)``."""
        eps = jax.random.normal(key, jnp.shape(x), dtype=jnp.result_type(x))
        return self.mu(t) * x + self.sigma(t) * eps, eps

    def denoise(self, x_t: Array, t: Array | float, eps: Array) -> Array:
        """Tweedie's denoiser :math:`\\hat{x} = (x_t - \\sigma(t) \\varepsilon) / \\mu(t)`."""
        return (x_t - self.sigma(t) * eps) / self.mu(t)

    def velocity(self, x: Array, t: Array | float, eps: Array) -> Array:
        r"""The velocity :math:`v = \mu(t)\, \varepsilon - \sigma(t)\, x` of a perturbation
        (Salimans & Ho, 2022, arXiv:2202.00512, Section 4)."""
        return self.mu(t) * eps - self.sigma(t) * x

    def eps_from_velocity(self, x_t: Array, t: Array | float, v: Array) -> Array:
        r"""The noise of :math:`x_t = \mu x + \sigma \varepsilon` given its velocity:
        :math:`\varepsilon = (\mu v + \sigma x_t)/(\mu^2 + \sigma^2)`, an identity since
        :math:`\mu v + \sigma x_t = (\mu^2 + \sigma^2)\, \varepsilon`."""
        mu, sigma = self.mu(t), self.sigma(t)
        return (mu * v + sigma * x_t) / (mu**2 + sigma**2)

    def ratio_table(self, points: int):
        r"""The noise-to-signal ratio :math:`\sigma(t)/\mu(t)` on ``points`` equally spaced
        times of :math:`[0, 1]`, as NumPy float64 arrays ``(t, ratio)`` (increasing in
        :math:`t`), computed eagerly also under :func:`jax.jit`: the table from which time grids
        and time samplers map a ratio back to :math:`t`."""
        import numpy as np

        t = np.linspace(0.0, 1.0, points)
        with jax.ensure_compile_time_eval():
            ratio = np.asarray(self.sigma(t) / self.mu(t), np.float64)
        return t, ratio

    def score(self, t: Array | float, eps: Array) -> Array:
        """The score :math:`\\nabla \\log p(x_t) = -\\varepsilon / \\sigma(t)`."""
        return -eps / self.sigma(t)
