r"""Markov-chain priors over whole trajectories with an exact density.

For a state-space model with initial density :math:`p(x_1)` and transition density
:math:`p(x_{i+1} \mid x_i)`, the joint density of a trajectory :math:`x_{1:L}` is

.. math:: \log p(x_{1:L}) = \log p(x_1) + \sum_{i=1}^{L-1} \log p(x_{i+1} \mid x_i).

:class:`MarkovPrior` is a :class:`numpyro.distributions.Distribution` with event shape
``(length, *state_shape)`` that computes exactly this. It is the prior that the classical
baselines (particle smoothers, EnKF/EnKS, 4D-Var, Kalman) use in place of the learned
:class:`~numpyro_sda.prior.TrajectoryPrior`, in the same user model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import Array
from numpyro.distributions import constraints

__all__ = ["MarkovPrior", "LinearGaussianDynamics", "SpunUpInitial"]


class LinearGaussianDynamics(NamedTuple):
    r"""Parameters of :math:`x_1 \sim N(m_0, P_0)`, :math:`x_{i+1} = A x_i + b + w`, :math:`w \sim N(0, Q)`."""

    A: Array
    b: Array
    Q: Array
    m0: Array
    P0: Array


def _check_state_distribution(d: dist.Distribution, what: str) -> None:
    if not isinstance(d, dist.Distribution):
        raise TypeError(f"{what} must be a numpyro Distribution, got {type(d).__name__}")
    if d.batch_shape != ():
        raise ValueError(
            f"{what} must describe ONE state: batch_shape must be (), got {d.batch_shape}; "
            "use .to_event() to declare the state dimensions as an event"
        )


class MarkovPrior(dist.Distribution):
    """A Markov chain over ``length`` states, as one NumPyro distribution.

    Args:
        initial: distribution of the first state; ``batch_shape == ()`` and ``event_shape`` is
            the state shape.
        transition: ``transition(x) -> Distribution`` of the next state given ONE state ``x``;
            same event shape as ``initial``. It must be a pure JAX function (it is vmapped and
            scanned).
        length: number of states :math:`L \\ge 1`.
        linear: optional :class:`LinearGaussianDynamics` when the chain is linear-Gaussian (lets
            exact methods such as the Kalman smoother use it).

    The density is exact (see the module docstring), so the same model can be used by NUTS,
    4D-Var or a particle filter.
    """

    arg_constraints: dict = {}
    pytree_data_fields = ()
    pytree_aux_fields = ("initial", "transition", "length", "linear")

    def __init__(
        self,
        initial: dist.Distribution,
        transition: Callable[[Array], dist.Distribution],
        length: int,
        *,
        linear: LinearGaussianDynamics | None = None,
        validate_args: bool | None = None,
    ) -> None:
        _check_state_distribution(initial, "initial")
        if not callable(transition):
            raise TypeError("transition must be a callable x -> Distribution")
        if int(length) != length or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        self.initial = initial
        self.transition = transition
        self.length = int(length)
        self.linear = linear
        self.state_shape = tuple(initial.event_shape)
        super().__init__(
            batch_shape=(), event_shape=(self.length, *self.state_shape),
            validate_args=validate_args,
        )

    @constraints.dependent_property(is_discrete=False, event_dim=None)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    # ------------------------------------------------------------------ sampling
    def _sample_one(self, key: Array) -> Array:
        key0, key = jax.random.split(key)
        x0 = self.initial.sample(key0)

        def step(x, k):
            nxt = self.transition(x).sample(k)
            return nxt, nxt

        if self.length == 1:
            return x0[None]
        _, rest = jax.lax.scan(step, x0, jax.random.split(key, self.length - 1))
        return jnp.concatenate([x0[None], rest], axis=0)

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        sample_shape = tuple(sample_shape)
        n = math.prod(sample_shape)
        xs = jax.vmap(self._sample_one)(jax.random.split(key, n))
        return xs.reshape(sample_shape + self.event_shape)

    # ------------------------------------------------------------------ density
    def _check_value(self, x: Array) -> tuple[Array, tuple[int, ...]]:
        x = jnp.asarray(x)
        k = len(self.event_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != self.event_shape:
            raise ValueError(
                f"MarkovPrior expects trajectories with trailing shape {self.event_shape} "
                f"(length, *state_shape), got an array of shape {x.shape}"
            )
        batch = tuple(x.shape[: x.ndim - k])
        return x.reshape((-1, *self.event_shape)), batch

    def transition_log_probs(self, x: Array) -> Array:
        r"""Per-step :math:`\log p(x_{i+1} \mid x_i)`, shape ``(*batch, length - 1)``."""
        flat, batch = self._check_value(x)

        def one(prev, nxt):
            return self.transition(prev).log_prob(nxt)

        lp = jax.vmap(jax.vmap(one))(flat[:, :-1], flat[:, 1:])
        return lp.reshape(batch + (self.length - 1,))

    def log_prob(self, x: Array) -> Array:
        flat, batch = self._check_value(x)
        lp0 = jax.vmap(self.initial.log_prob)(flat[:, 0])
        if self.length > 1:
            lp0 = lp0 + self.transition_log_probs(flat).sum(-1)
        return lp0.reshape(batch)

    def spun_up(self, steps: int) -> MarkovPrior:
        """The same chain started from the initial distribution pushed through ``steps`` transitions.

        This is how the paper's particle ground truth is initialised (64 transitions from the
        prior). The spun-up initial state can be sampled but has no closed-form density.
        """
        return MarkovPrior(
            SpunUpInitial(self.initial, self.transition, steps), self.transition, self.length
        )


class SpunUpInitial(dist.Distribution):
    """The law of :math:`x_{n}` for a chain started at ``base`` and run ``steps`` transitions.

    It can be sampled (by simulation) but its density has no closed form: ``log_prob`` raises.
    """

    arg_constraints: dict = {}
    support = constraints.real
    pytree_aux_fields = ("base", "transition", "steps")

    def __init__(self, base: dist.Distribution, transition: Callable, steps: int) -> None:
        _check_state_distribution(base, "base")
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        self.base, self.transition, self.steps = base, transition, int(steps)
        super().__init__(batch_shape=(), event_shape=base.event_shape)

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        sample_shape = tuple(sample_shape)
        n = math.prod(sample_shape)

        def one(k):
            k0, k = jax.random.split(k)
            x = self.base.sample(k0)
            x, _ = jax.lax.scan(
                lambda x, kk: (self.transition(x).sample(kk), None), x,
                jax.random.split(k, self.steps),
            )
            return x

        xs = jax.vmap(one)(jax.random.split(key, n))
        return xs.reshape(sample_shape + self.event_shape)

    def log_prob(self, value: Array) -> Array:
        raise ValueError(
            f"the initial state after {self.steps} spin-up transitions has no closed-form density; "
            "use it with sampling-based methods (particle smoothers, EnKF/EnKS), or give 4D-Var / "
            "NUTS a prior with an explicit initial density (markov_prior(..., spinup=0))"
        )
