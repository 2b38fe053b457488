r"""The common interface of dynamical systems.

A system is a discrete-time Markov chain on states of shape ``state_shape``:

.. math:: x_1 \sim p(x_1), \qquad x_{i+1} = f(x_i) + w_i, \qquad w_i \sim \mathcal{N}(0, s^2 I),

with a deterministic step :math:`f` (an ODE/PDE integrator over one saved interval) and optional
Gaussian model noise of standard deviation :math:`s` (``noise_std``, physical units). Each system
provides per-channel normalisation statistics (``mean``, ``std``), a simulator returning
``(N, T, *state_shape)`` arrays, and :meth:`DynamicalSystem.markov_prior`, the exact trajectory
density that the classical baselines use. In normalised coordinates
:math:`\tilde{x} = (x - m) / s_x` the transition is
:math:`\tilde{x}_{i+1} \sim \mathcal{N}((f(s_x \tilde{x}_i + m) - m)/s_x,\ (s / s_x)^2)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array

from numpyro_sda.markov import MarkovPrior

__all__ = ["DynamicalSystem", "check_positive", "check_length"]


def check_positive(name: str, value: float) -> float:
    """Validate a strictly positive finite scalar parameter."""
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a number, got {value!r}") from e
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v


def check_length(name: str, value: int, minimum: int = 0) -> int:
    """Validate an integer count (lengths, burn-in, number of trajectories)."""
    if isinstance(value, bool) or int(value) != value:
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class DynamicalSystem(ABC):
    """Base class: subclasses define ``state_shape``, ``dt``, ``noise_std``, ``mean``, ``std``,
    :meth:`initial_distribution` and :meth:`step`."""

    state_shape: tuple[int, ...]
    dt: float
    noise_std: float | None = None
    mean: np.ndarray
    std: np.ndarray

    # ------------------------------------------------------------------ to define
    @abstractmethod
    def initial_distribution(self) -> dist.Distribution:
        """Distribution of the initial state (physical units), batch ``()``, event ``state_shape``."""

    @abstractmethod
    def step(self, x: Array) -> Array:
        """Deterministic part of one transition of ONE physical state (pure JAX)."""

    # ------------------------------------------------------------------ derived
    def _check_state(self, x: Array) -> Array:
        x = jnp.asarray(x)
        k = len(self.state_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != tuple(self.state_shape):
            raise ValueError(
                f"{type(self).__name__} states have shape {self.state_shape}; got an array of "
                f"shape {x.shape}"
            )
        return x

    def transition(self, key: Array, x: Array) -> Array:
        """One stochastic step of ONE state: ``step(x)`` plus Gaussian model noise."""
        nxt = self.step(x)
        if self.noise_std:
            nxt = nxt + self.noise_std * jax.random.normal(key, nxt.shape, nxt.dtype)
        return nxt

    def _stats(self) -> tuple[Array, Array]:
        return (jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.std, jnp.float32))

    def normalize(self, x: Array) -> Array:
        """:math:`(x - m) / s` with the per-channel statistics (broadcast on trailing dims)."""
        x = self._check_state(x)
        m, s = self._stats()
        return (x - m) / s

    def denormalize(self, x: Array) -> Array:
        """:math:`s x + m`, the inverse of :meth:`normalize`."""
        x = self._check_state(x)
        m, s = self._stats()
        return x * s + m

    def _initial_states(self, key: Array, num: int) -> Array:
        """``num`` draws of the initial state used by :meth:`simulate` (float32)."""
        return self.initial_distribution().sample(key, (num,)).astype(jnp.float32)

    @partial(jax.jit, static_argnums=(0, 2, 3, 4))
    def _simulate(self, key: Array, num: int, length: int, burn_in: int) -> Array:
        k0, k1 = jax.random.split(key)
        x0 = self._initial_states(k0, num)

        def advance(x, k):
            keys = jax.random.split(k, num)
            x = jax.vmap(self.transition)(keys, x).astype(jnp.float32)
            return x, x

        kb, kt = jax.random.split(k1)
        x, _ = jax.lax.scan(advance, x0, jax.random.split(kb, burn_in))
        if length == 1:
            return x[:, None]
        _, rest = jax.lax.scan(advance, x, jax.random.split(kt, length - 1))
        return jnp.concatenate([x[:, None], jnp.moveaxis(rest, 0, 1)], axis=1)

    def simulate(
        self, key: Array, num_trajectories: int, length: int, burn_in: int = 0
    ) -> Array:
        """Simulate ``num_trajectories`` independent trajectories of ``length`` states.

        The chain starts from :meth:`initial_distribution`, runs ``burn_in`` transitions that are
        discarded, then records ``length`` consecutive states (the first recorded state is the
        state after burn-in). Returns a float32 array ``(N, length, *state_shape)`` in physical
        units.
        """
        num = check_length("num_trajectories", num_trajectories, 1)
        length = check_length("length", length, 1)
        burn_in = check_length("burn_in", burn_in, 0)
        return self._simulate(key, num, length, burn_in)

    def _normalized_initial(self) -> dist.Distribution:
        init = self.initial_distribution()
        m, s = self._stats()
        if isinstance(init, dist.MultivariateNormal):
            loc = (init.loc - m) / s
            cov = init.covariance_matrix / (s[:, None] * s[None, :])
            return dist.MultivariateNormal(loc, cov)
        base = init.base_dist if isinstance(init, dist.Independent) else init
        if isinstance(base, dist.Normal):
            loc = jnp.broadcast_to((base.loc - m) / s, self.state_shape)
            scale = jnp.broadcast_to(base.scale / s, self.state_shape)
            return dist.Normal(loc, scale).to_event(len(self.state_shape))
        raise TypeError(
            f"cannot normalise an initial distribution of type {type(init).__name__}; "
            "override _normalized_initial"
        )

    def markov_prior(
        self,
        length: int,
        model_error: float | None = None,
        normalized: bool = True,
        spinup: int = 0,
    ) -> MarkovPrior:
        """The exact Markov trajectory prior of this system, as a NumPyro distribution.

        Args:
            length: number of states of the trajectory.
            model_error: Gaussian transition noise std in physical units; defaults to the
                system's ``noise_std``. Deterministic systems must be given one.
            normalized: work in normalised coordinates (the coordinates of the learned prior and
                of the datasets); otherwise physical units.
            spinup: when > 0, the initial state is the initial distribution pushed through
                ``spinup`` transitions (sample-only; the paper's particle ground truth uses 64).

        Returns:
            a :class:`~numpyro_sda.markov.MarkovPrior` with event shape ``(length, *state_shape)``.
        """
        length = check_length("length", length, 1)
        spinup = check_length("spinup", spinup, 0)
        noise = self.noise_std if model_error is None else check_positive("model_error", model_error)
        if not noise:
            raise ValueError(
                f"{type(self).__name__} is deterministic: give markov_prior a model_error > 0 "
                "(Gaussian transition noise std in physical units)"
            )
        m, s = self._stats()
        nd = len(self.state_shape)

        if normalized:
            scale = jnp.broadcast_to(noise / s, self.state_shape)

            def transition(x):
                return dist.Normal((self.step(x * s + m) - m) / s, scale).to_event(nd)

            initial = self._normalized_initial()
        else:
            def transition(x):
                return dist.Normal(self.step(x), noise).to_event(nd)

            initial = self.initial_distribution()
        prior = MarkovPrior(initial, transition, length)
        return prior.spun_up(spinup) if spinup else prior

    def __repr__(self) -> str:
        return f"{type(self).__name__}(state_shape={self.state_shape}, dt={self.dt})"
