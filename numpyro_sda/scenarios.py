r"""Named observation scenarios: a truth, its observations and the NumPyro model that produced them.

Each scenario is one NumPyro model, written once, that SDA runs with a learned
:class:`~numpyro_sda.prior.TrajectoryPrior` and the classical baselines run with the system's
exact Markov prior (``system.markov_prior(length, model_error=...)``). Everything is in
normalised units (the coordinates of the learned priors and of the datasets).

**Kuramoto–Sivashinsky** (``KuramotoSivashinsky()``: L = 22, 64 grid points, dt = 0.25), 65
states (4160 numbers), the truth started on the attractor after 400 burn-in states:

* ``"sparse"``: every 4th grid point at every 4th state (17 x 16 = 272 numbers) with Gaussian
  noise of std 0.1, :math:`y = x_{[::4, ::4]} + \mathcal{N}(0, 0.1^2)`;
* ``"saturating"``: the same points seen through the saturating operator
  :math:`y = \tanh(2 x_{[::4, ::4]}) + \mathcal{N}(0, 0.1^2)` (normalised units). It is nearly
  linear for :math:`|x| \lesssim 0.3` and saturates beyond :math:`|x| \approx 1`, so large
  amplitudes are only bounded from below by the data (the analogue of the paper's saturating
  Kolmogorov operator).

The model reshapes the trajectory to ``(length, 64)`` before observing it, so the same model
accepts the learned prior's ``(length, 1, 64)`` states and the flat ``(length, 64)`` states of
:class:`FlatKuramotoSivashinsky`, whose Markov prior the baselines use: the localised EnKS needs
1-D (periodic) states.

**Kolmogorov flow** (``KolmogorovFlow()``, vorticity states ``(1, 64, 64)``), the paper's
scenarios (Rozet & Louppe, 2023, Section 5.2), observations of the normalised vorticity:

* ``"coarse"``: the vorticity averaged over 8 x 8 blocks (an 8 x 8 image) at every 4th state,
  noise std 0.1;
* ``"sparse"``: every 4th pixel in each direction (16 x 16) at every 4th state, noise std 0.1;
* ``"saturating"``: :math:`y = \tanh(x / 2)` of every 2nd pixel at every 4th state (a smooth
  saturation), noise std 0.05.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array

from numpyro_sda.systems import KolmogorovFlow, KuramotoSivashinsky

__all__ = [
    "Scenario",
    "FlatKuramotoSivashinsky",
    "KS_SCENARIOS",
    "KOLMOGOROV_SCENARIOS",
    "ks_model",
    "ks_scenario",
    "kolmogorov_model",
    "kolmogorov_scenario",
    "kolmogorov_forcing",
    "KS_LENGTH",
    "KS_BURN_IN",
]

KS_LENGTH = 65
KS_BURN_IN = 400
#: KS scenarios: name -> (every (states), stride (grid points), noise std, operator)
KS_SCENARIOS: dict[str, tuple[int, int, float, str]] = {
    "sparse": (4, 4, 0.1, "identity"),
    "saturating": (4, 4, 0.1, "tanh2"),
}
#: Kolmogorov scenarios: name -> (every (states), noise std, operator)
KOLMOGOROV_SCENARIOS: dict[str, tuple[int, float, str]] = {
    "coarse": (4, 0.1, "coarsen8"),
    "sparse": (4, 0.1, "pixels4"),
    "saturating": (4, 0.05, "tanh_half2"),
}


@dataclass
class Scenario:
    """One assimilation problem (normalised units).

    Attributes:
        name: the scenario's name.
        system: the dynamical system that produced the truth.
        truth: the true trajectory ``(length, *state_shape)``.
        y: the observations.
        model: ``model(prior, y=None)``, the NumPyro observation model.
        obs_times: indices of the observed states.
        description: one line describing the observation operator.
    """

    name: str
    system: Any
    truth: Array
    y: Array
    model: Callable[..., None]
    obs_times: np.ndarray
    description: str


class FlatKuramotoSivashinsky(KuramotoSivashinsky):
    """:class:`KuramotoSivashinsky` with flat ``(N,)`` states (the baselines' localised EnKS
    needs 1-D states), and optionally perturbed equation coefficients (the model-error runs).

    Args:
        second_order_scale, fourth_order_scale, convection_scale: coefficients of
            :math:`u_{xx}`, :math:`u_{xxxx}` and :math:`\\tfrac12 (u^2)_x` (1 in the true system;
            exponax's ``KuramotoSivashinskyConservative`` arguments).
        **kwargs: the :class:`KuramotoSivashinsky` arguments.
    """

    def __init__(
        self,
        *,
        second_order_scale: float = 1.0,
        fourth_order_scale: float = 1.0,
        convection_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        import exponax

        super().__init__(**kwargs)
        self.state_shape = (self.num_points,)
        self.mean = np.zeros((1,), np.float32)
        self.std = np.full((1,), float(self.std.ravel()[0]), np.float32)
        self.coefficients = (float(second_order_scale), float(fourth_order_scale),
                             float(convection_scale))
        self._stepper = exponax.stepper.KuramotoSivashinskyConservative(
            1, self.domain_length, self.num_points, self.dt / self.substeps, order=self.order,
            second_order_scale=self.coefficients[0], fourth_order_scale=self.coefficients[1],
            convection_scale=self.coefficients[2],
        )

    def initial_distribution(self) -> dist.Distribution:
        """Climatological :math:`\\mathcal{N}(0, s^2)` independently at every grid point."""
        loc = jnp.broadcast_to(jnp.asarray(self.mean), self.state_shape)
        scale = jnp.broadcast_to(jnp.asarray(self.std), self.state_shape)
        return dist.Normal(loc, scale).to_event(1)

    def step(self, x: Array) -> Array:
        """Advance flat states ``(..., N)`` by ``dt``."""
        x = self._check_state(x)
        u = x.reshape(-1, 1, self.num_points)

        def one(v):
            return jax.lax.fori_loop(0, self.substeps, lambda _, w: self._stepper(w), v)

        return jax.vmap(one)(u).reshape(x.shape)

    def __hash__(self) -> int:
        return hash((super().__hash__(), self.coefficients))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and hash(other) == hash(self)


def _ks_operator(name: str) -> Callable[[Array], Array]:
    if name == "identity":
        return lambda h: h
    if name == "tanh2":
        return lambda h: jnp.tanh(2.0 * h)
    raise ValueError(f"unknown KS operator {name!r}")


def ks_model(prior, y=None, *, every: int = 4, stride: int = 4, noise: float = 0.1,
             operator: str = "identity") -> None:
    """The KS observation model: ``operator(x[::every, ::stride]) + N(0, noise^2)``.

    ``prior`` is the learned ``TrajectoryPrior`` (states ``(1, 64)``) or the flat Markov prior of
    :class:`FlatKuramotoSivashinsky` (states ``(64,)``); the trajectory is reshaped to
    ``(length, 64)`` first, so both give the same observations.
    """
    x = numpyro.sample("x", prior)
    u = x.reshape(x.shape[0], -1)
    h = _ks_operator(operator)(u[::every, ::stride])
    numpyro.sample("y", dist.Normal(h, noise).to_event(2), obs=y)


def ks_scenario(key: Array, name: str = "sparse", length: int = KS_LENGTH) -> Scenario:
    """Simulate a KS truth (normalised, ``(length, 1, 64)``) and observations of ``name``."""
    if name not in KS_SCENARIOS:
        raise ValueError(f"unknown KS scenario {name!r}; expected one of {sorted(KS_SCENARIOS)}")
    every, stride, noise, operator = KS_SCENARIOS[name]
    system = KuramotoSivashinsky()
    k_truth, k_obs = jax.random.split(key)
    truth = system.normalize(system.simulate(k_truth, 1, length, burn_in=KS_BURN_IN)[0])
    clean = _ks_operator(operator)(truth.reshape(length, -1)[::every, ::stride])
    y = clean + noise * jax.random.normal(k_obs, clean.shape)

    def model(prior, y=None):
        ks_model(prior, y, every=every, stride=stride, noise=noise, operator=operator)

    op = "x" if operator == "identity" else "tanh(2x)"
    desc = (f"KS '{name}': y = {op}[::{every}, ::{stride}] + N(0, {noise}^2), "
            f"{y.size} numbers of {truth.size}")
    return Scenario(name, system, truth, y, model, np.arange(0, length, every), desc)


# ------------------------------------------------------------------------------ Kolmogorov
def _kolmogorov_operator(name: str) -> Callable[[Array], Array]:
    if name == "coarsen8":
        def coarsen(x):  # (..., 1, 64, 64) -> (..., 1, 8, 8) block means
            s = x.shape
            return x.reshape(*s[:-2], s[-2] // 8, 8, s[-1] // 8, 8).mean(axis=(-3, -1))

        return coarsen
    if name == "pixels4":
        return lambda x: x[..., ::4, ::4]
    if name == "tanh_half2":
        return lambda x: jnp.tanh(x[..., ::2, ::2] / 2.0)
    raise ValueError(f"unknown Kolmogorov operator {name!r}")


def kolmogorov_forcing(resolution: int = 64, mode: int = 4) -> np.ndarray:
    r"""The Kolmogorov vorticity forcing :math:`-\cos(k x_1)` on the ``resolution``\ :sup:`2` grid,
    shape ``(1, n, n)`` (unit amplitude; the UNet's context channel, ``--context forcing``)."""
    x1 = 2 * np.pi * np.arange(resolution) / resolution
    field = -np.cos(mode * x1)[None, :] * np.ones((resolution, 1))
    return field[None].astype(np.float32)


def kolmogorov_model(prior, y=None, *, every: int = 4, noise: float = 0.1,
                     operator: str = "coarsen8") -> None:
    """The Kolmogorov observation model: ``operator(x[::every]) + N(0, noise^2)``."""
    x = numpyro.sample("x", prior)
    h = _kolmogorov_operator(operator)(x[::every])
    numpyro.sample("y", dist.Normal(h, noise).to_event(h.ndim), obs=y)


def kolmogorov_scenario(key: Array, name: str = "coarse", length: int = 17,
                        system: KolmogorovFlow | None = None, burn_in: int = 64) -> Scenario:
    """Simulate a Kolmogorov truth (normalised, ``(length, 1, 64, 64)``) and observations."""
    if name not in KOLMOGOROV_SCENARIOS:
        raise ValueError(f"unknown Kolmogorov scenario {name!r}; expected one of "
                         f"{sorted(KOLMOGOROV_SCENARIOS)}")
    every, noise, operator = KOLMOGOROV_SCENARIOS[name]
    system = KolmogorovFlow() if system is None else system
    k_truth, k_obs = jax.random.split(key)
    truth = system.normalize(system.simulate(k_truth, 1, length, burn_in=burn_in)[0])
    clean = _kolmogorov_operator(operator)(truth[::every])
    y = clean + noise * jax.random.normal(k_obs, clean.shape)

    def model(prior, y=None):
        kolmogorov_model(prior, y, every=every, noise=noise, operator=operator)

    desc = {"coarsen8": "8x8 block means", "pixels4": "every 4th pixel",
            "tanh_half2": "tanh(x/2) of every 2nd pixel"}[operator]
    desc = (f"Kolmogorov '{name}': {desc} at every {every}th state + N(0, {noise}^2), "
            f"{y.size} numbers of {truth.size}")
    return Scenario(name, system, truth, y, model, np.arange(0, length, every), desc)
