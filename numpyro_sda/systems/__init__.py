"""Dynamical systems: pure-JAX simulators with exact Markov priors.

* :class:`Lorenz63` — the paper's noisy Lorenz-63 (RK4, dt 0.025, noise std sqrt(dt)).
* :class:`Lorenz96` — Lorenz-96 on a ring (n = 32, F = 16 by default).
* :class:`KuramotoSivashinsky` — 1-D KS equation (exponax).
* :class:`KolmogorovFlow` — 2-D Kolmogorov flow vorticity (exponax), 256² simulated, 64² saved.
* :class:`LinearGaussian` — linear-Gaussian dynamics with an exact Kalman filter / RTS smoother.
"""

from __future__ import annotations

import importlib
from typing import Any

from numpyro_sda.systems.base import DynamicalSystem
from numpyro_sda.systems.linear_gaussian import KalmanResult, LinearGaussian
from numpyro_sda.systems.lorenz63 import Lorenz63
from numpyro_sda.systems.lorenz96 import Lorenz96

__all__ = [
    "DynamicalSystem",
    "KalmanResult",
    "KolmogorovFlow",
    "KuramotoSivashinsky",
    "LinearGaussian",
    "Lorenz63",
    "Lorenz96",
]

_LAZY = {  # exponax-based systems import their solver only when used
    "KuramotoSivashinsky": "numpyro_sda.systems.kuramoto_sivashinsky",
    "KolmogorovFlow": "numpyro_sda.systems.kolmogorov",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'numpyro_sda.systems' has no attribute {name!r}")
