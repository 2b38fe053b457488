r"""Explicit ODE integrators used by the low-dimensional systems.

Classical fourth-order Runge–Kutta for :math:`\dot{x} = f(x)` over a step :math:`h`:

.. math:: k_1 = f(x),\ k_2 = f(x + \tfrac{h}{2} k_1),\ k_3 = f(x + \tfrac{h}{2} k_2),\
          k_4 = f(x + h k_3),\quad x \leftarrow x + \tfrac{h}{6}(k_1 + 2k_2 + 2k_3 + k_4).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import Array

__all__ = ["rk4"]


def rk4(f: Callable[[Array], Array], x: Array, dt: float, substeps: int = 1) -> Array:
    """Integrate :math:`\\dot{x} = f(x)` over ``dt`` with ``substeps`` RK4 steps of ``dt / substeps``."""
    h = dt / substeps

    def one(x, _):
        k1 = f(x)
        k2 = f(x + 0.5 * h * k1)
        k3 = f(x + 0.5 * h * k2)
        k4 = f(x + h * k3)
        return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4), None

    if substeps == 1:
        return one(x, None)[0]
    return jax.lax.scan(one, x, None, length=substeps)[0]
