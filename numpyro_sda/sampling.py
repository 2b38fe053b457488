r"""Predictor–corrector reverse diffusion over whole trajectories.

Given a noise predictor :math:`\varepsilon(x_t, t)` and a VP schedule, the reverse process is
discretised on :math:`t_i = 1 - i/S`. Each step from :math:`t` to :math:`s = t - 1/S` does

* a predictor (exponential integrator / DDIM step),
  :math:`x \leftarrow r x + (\sigma(s) - r \sigma(t))\, \varepsilon(x, t)` with
  :math:`r = \mu(s)/\mu(t)`;
* :math:`C` Langevin corrections at level :math:`s`: :math:`\varepsilon' = \varepsilon(x, s)`,
  :math:`\delta = \tau / \overline{\varepsilon'^2}`,
  :math:`x \leftarrow x - (\delta \varepsilon' + \sqrt{2 \delta} z)\, \sigma(s)`, :math:`z \sim N(0, I)`.

Reference: Rozet & Louppe (2023), arXiv:2306.10574, Section 3 and Algorithm 2; Song et al.
(2021), "Score-based generative modeling through SDEs" for the predictor–corrector scheme.

The whole loop is one :func:`jax.lax.scan`; :func:`predictor_corrector` acts on one trajectory
and is meant to be :func:`jax.vmap`-ed over samples (see :func:`sample_trajectories`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

from numpyro_sda.sde import VPSDE

__all__ = ["predictor_corrector", "sample_trajectories", "check_sampler_settings", "EpsFn"]

EpsFn = Callable[[Array, Array], Array]
"""A noise predictor ``eps(x_t, t)`` over one whole trajectory ``x_t`` and a scalar ``t``."""


def check_sampler_settings(steps: int, corrections: int, tau: float) -> None:
    """Validate the predictor–corrector settings (clear errors naming the setting)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if corrections < 0:
        raise ValueError(f"corrections must be >= 0, got {corrections}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")


def predictor_corrector(
    key: Array,
    eps: EpsFn,
    shape: tuple[int, ...],
    sde: VPSDE | None = None,
    steps: int = 256,
    corrections: int = 0,
    tau: float = 1.0,
    dtype=jnp.float32,
    x_init: Array | None = None,
) -> Array:
    """Draw one trajectory of ``shape`` by reverse diffusion from :math:`t = 1` to :math:`t = 0`.

    Args:
        key: PRNG key.
        eps: noise predictor ``eps(x, t)`` on ONE trajectory (guided or not).
        shape: the event shape ``(length, *state_shape)``.
        sde: the noise schedule (default :class:`VPSDE`).
        steps: number of predictor steps :math:`S`.
        corrections: number of Langevin corrections :math:`C` per step.
        tau: Langevin step size factor :math:`\\tau`.
        x_init: optional starting point at :math:`t = 1` (default: a standard normal draw).

    Returns:
        the sample at :math:`t = 0`, of shape ``shape``.
    """
    check_sampler_settings(steps, corrections, tau)
    sde = VPSDE() if sde is None else sde
    key, init_key = jax.random.split(key)
    x = jax.random.normal(init_key, shape, dtype) if x_init is None else jnp.asarray(x_init, dtype)
    times = jnp.linspace(1.0, 0.0, steps + 1, dtype=dtype)

    def corrector(x: Array, s: Array, key: Array) -> Array:
        def body(x, k):
            e = eps(x, s)
            delta = tau / jnp.mean(e**2)
            z = jax.random.normal(k, x.shape, x.dtype)
            return x - (delta * e + jnp.sqrt(2.0 * delta) * z) * sde.sigma(s), None

        x, _ = jax.lax.scan(body, x, jax.random.split(key, corrections))
        return x

    def step(x: Array, inputs: tuple[Array, Array, Array]) -> tuple[Array, None]:
        t, s, k = inputs
        r = sde.mu(s) / sde.mu(t)
        x = r * x + (sde.sigma(s) - r * sde.sigma(t)) * eps(x, t)
        if corrections > 0:
            x = corrector(x, s, k)
        return x.astype(dtype), None

    keys = jax.random.split(key, steps)
    x, _ = jax.lax.scan(step, x, (times[:-1], times[1:], keys))
    return x


def sample_trajectories(
    key: Array,
    eps: EpsFn,
    num_samples: int,
    shape: tuple[int, ...],
    sde: VPSDE | None = None,
    steps: int = 256,
    corrections: int = 0,
    tau: float = 1.0,
    dtype=jnp.float32,
) -> Array:
    """Draw ``num_samples`` independent trajectories, vmapped over samples (one compiled call)."""
    keys = jax.random.split(key, num_samples)

    def one(k: Array) -> Array:
        return predictor_corrector(k, eps, shape, sde, steps, corrections, tau, dtype)

    return jax.vmap(one)(keys)
