r"""A diffusion prior over whole trajectories, as a NumPyro distribution.

A noise predictor :math:`\varepsilon(x_t, t)` of a variance-preserving diffusion (see
:mod:`numpyro_sda.sde`) defines a distribution over trajectories :math:`x \in
\mathbb{R}^{L \times S}` through its reverse process: start from :math:`x_1 \sim N(0, I)` and
integrate the score :math:`\nabla_{x_t} \log p(x_t) = -\varepsilon(x_t, t) / \sigma(t)` down to
:math:`t = 0` with a predictor–corrector scheme (Rozet & Louppe, 2023, arXiv:2306.10574,
Section 3). In score-based data assimilation :math:`\varepsilon` is composed from a *local* score
network over windows of :math:`2k + 1` states; any callable over one whole trajectory works.

:class:`TrajectoryPrior` makes this prior an ordinary NumPyro site::

    x = numpyro.sample("x", TrajectoryPrior(score, length=65))

``sample`` draws unconditional trajectories. ``log_prob`` integrates the probability-flow ODE
(Song et al., 2021, "Score-based generative modeling through SDEs", Section 4.3) with the exact
divergence: a numerical density, costly for long trajectories, that posterior sampling never
needs; to condition the prior on the model's observed sites use :class:`numpyro_sda.SDA`
(guided reverse diffusion).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array
from numpyro.distributions import constraints

from numpyro_sda.sampling import check_sampler_settings, sample_trajectories
from numpyro_sda.sde import VPSDE

__all__ = ["TrajectoryPrior", "gaussian_eps"]


def _is_local_score(obj: Any) -> bool:
    return hasattr(obj, "eps_fn") and callable(obj.eps_fn) and hasattr(obj, "window")


class TrajectoryPrior(dist.Distribution):
    r"""Diffusion prior over trajectories of ``length`` states, event shape ``(length, *state_shape)``.

    Args:
        eps: the noise predictor. Either a callable ``eps(x, t)`` on ONE trajectory ``x`` of
            shape ``(length, *state_shape)`` and a scalar ``t`` in :math:`[0, 1]`, returning an
            array of the same shape (pure JAX; it is vmapped and jitted), or a
            :class:`~numpyro_sda.score.LocalScore` (anything with ``eps_fn()``, ``window`` and
            ``state_shape``), whose window scores are composed over the trajectory.
        length: number of states :math:`L`.
        state_shape: shape of one state; optional when ``eps`` is a ``LocalScore``.
        sde: the noise schedule (:class:`~numpyro_sda.sde.VPSDE` by default; must match the
            one the score was trained with).
        steps: reverse-diffusion steps used by :meth:`sample`.
        corrections: Langevin corrections per step used by :meth:`sample`.
        tau: Langevin step size factor used by :meth:`sample`.
        log_prob_steps: Heun steps of the probability-flow ODE in :meth:`log_prob`.
        stride: for a ``LocalScore``, compose the trajectory score from every ``stride``-th
            window only (:mod:`numpyro_sda.score`, "strided composition"): about ``1/stride``
            of the network cost, each state at least ``k - stride // 2`` states from the edge
            of the window that scores it. ``1`` (default) is the paper's composition.
        average: for a ``LocalScore``, each state averages the outputs of the windows in which
            it sits within ``average`` states of the centre (:mod:`numpyro_sda.score`,
            "averaged composition"; needs ``stride=1``). ``0`` (default) is the paper's
            composition.

    Raises:
        ValueError: when ``length`` is shorter than a local score's window, when
            ``state_shape`` is missing for a plain callable, or on invalid sampler settings.
        TypeError: when ``eps`` is not callable.
    """

    arg_constraints: dict = {}
    support = constraints.real
    pytree_data_fields = ()
    pytree_aux_fields = (
        "eps", "score", "length", "state_shape", "sde", "steps", "corrections", "tau",
        "log_prob_steps", "stride", "average",
    )

    def __init__(
        self,
        eps: Callable[[Array, Array], Array] | Any,
        length: int,
        state_shape: tuple[int, ...] | None = None,
        sde: VPSDE | None = None,
        steps: int = 256,
        corrections: int = 1,
        tau: float = 0.25,
        log_prob_steps: int = 128,
        *,
        stride: int = 1,
        average: int = 0,
        validate_args: bool | None = None,
    ) -> None:
        if isinstance(length, bool) or not float(length).is_integer():
            raise TypeError(f"length must be an integer number of states, got {length!r}")
        length = int(length)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.score = None
        if _is_local_score(eps):
            window = int(eps.window)
            if length < window:
                raise ValueError(
                    f"trajectory length {length} is shorter than the local score's window "
                    f"{window}: a composed trajectory score needs at least {window} states"
                )
            score_shape = tuple(getattr(eps, "state_shape", ()) or ())
            if state_shape is None:
                if not score_shape:
                    raise ValueError("the local score does not know its state_shape; pass it")
                state_shape = score_shape
            elif score_shape and tuple(state_shape) != score_shape:
                raise ValueError(
                    f"state_shape {tuple(state_shape)} differs from the local score's "
                    f"state_shape {score_shape}"
                )
            trained = getattr(eps, "sde", None)
            if sde is not None and trained is not None and sde != trained:
                raise ValueError(
                    f"the noise schedule {sde} differs from the one the local score was trained "
                    f"with ({trained}); pass sde=score.sde or leave sde unset"
                )
            sde = trained if sde is None else sde
            self.score = eps
            # duck-typed local scores need only eps_fn(); the options are passed when used
            options = {} if (stride, average) == (1, 0) else dict(stride=stride, average=average)
            eps = eps.eps_fn(**options)
        elif not callable(eps):
            raise TypeError(f"eps must be a callable eps(x, t) or a LocalScore, got {type(eps)}")
        elif stride != 1 or average != 0:
            raise ValueError(
                f"stride={stride!r} and average={average!r} compose a LocalScore's windows; eps "
                "is a plain callable (it scores whole trajectories), so leave them at 1 and 0"
            )
        if state_shape is None:
            raise ValueError(
                "state_shape is required when eps is a plain callable, e.g. "
                "TrajectoryPrior(eps, length=65, state_shape=(3,))"
            )
        if isinstance(state_shape, int):
            state_shape = (state_shape,)
        check_sampler_settings(steps, corrections, tau)
        self.eps = eps
        self.length = length
        self.state_shape = tuple(int(s) for s in state_shape)
        self.sde = VPSDE() if sde is None else sde
        self.steps = int(steps)
        self.corrections = int(corrections)
        self.tau = float(tau)
        self.log_prob_steps = int(log_prob_steps)
        self.stride = int(stride)
        self.average = int(average)
        if self.log_prob_steps < 1:
            raise ValueError(f"log_prob_steps must be >= 1, got {log_prob_steps}")
        super().__init__(
            batch_shape=(), event_shape=(length, *self.state_shape), validate_args=validate_args
        )

    def eps_for_guidance(self, grad_states: Any = None) -> Callable[[Array, Array], Array]:
        """The noise predictor, with gradients restricted to ``grad_states`` when possible.

        For a composed :class:`~numpyro_sda.score.LocalScore`, only the windows producing the
        states in the boolean mask ``grad_states`` (shape ``(length,)``) are differentiated (see
        :meth:`LocalScore.eps_fn`): exact for likelihoods that depend on those states only, and
        much cheaper when few states are observed. A plain callable is returned as it is.
        """
        if grad_states is None or self.score is None:
            return self.eps
        mask = np.asarray(grad_states, bool)
        if mask.shape != (self.length,):
            raise ValueError(f"grad_states must have shape ({self.length},), got {mask.shape}")
        if (self.stride, self.average) == (1, 0):
            return self.score.eps_fn(mask)
        return self.score.eps_fn(mask, stride=self.stride, average=self.average)

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        """Unconditional trajectories by predictor–corrector reverse diffusion (float32)."""
        n = math.prod(sample_shape)
        xs = _sample_jit(self, key, max(n, 1))
        return xs[:n].reshape(tuple(sample_shape) + self.event_shape)

    def log_prob(self, value: Array) -> Array:
        r"""Log-density by the probability-flow ODE (instantaneous change of variables).

        With :math:`s(t) = \sigma(t)/\mu(t)`, the deterministic (DDIM) flow
        :math:`\frac{dx}{dt} = f(x, t) = \frac{\mu'}{\mu} x + \mu s'\, \varepsilon(x, t)`
        carries :math:`p_0` to :math:`p_1 \approx N(0, \sigma(1)^2 I)`, and
        :math:`\log p_0(x_0) = \log p_1(x_1) + \int_0^1 \nabla \cdot f(x_t, t)\, dt`
        (Song et al., 2021, Section 4.3; Chen et al., 2018). The ODE is integrated with
        ``log_prob_steps`` Heun steps and the exact divergence (one JVP per dimension, so the
        cost grows with the trajectory size): it is a numerical approximation of the density of
        the diffusion model, exact for an exact Gaussian score up to the integration error.
        It is NOT needed for posterior inference: use :class:`numpyro_sda.SDA`.
        """
        value = jnp.asarray(value, jnp.float32)
        batch = value.shape[: value.ndim - len(self.event_shape)]
        if value.shape[len(batch):] != self.event_shape:
            raise ValueError(
                f"value must end with the event shape {self.event_shape}, got {value.shape}"
            )
        flat = value.reshape((-1,) + self.event_shape)
        lp = jax.vmap(lambda x: _log_prob_jit(self, x))(flat)
        return lp.reshape(batch)
    def __repr__(self) -> str:
        return (
            f"TrajectoryPrior(length={self.length}, state_shape={self.state_shape}, "
            f"sde={self.sde}, steps={self.steps}, corrections={self.corrections}, tau={self.tau}"
            + (f", stride={self.stride}" if self.stride != 1 else "")
            + (f", average={self.average}" if self.average else "") + ")"
        )


def gaussian_eps(mean: Array, cov: Array, sde: VPSDE | None = None) -> Callable[[Array, Array], Array]:
    r"""The exact noise predictor of a Gaussian trajectory prior :math:`x \sim N(m, P)`.

    With :math:`x_t = \mu x + \sigma \varepsilon`, :math:`x_t \sim N(\mu m, \mu^2 P +
    \sigma^2 I)`, so :math:`\varepsilon(x_t, t) = -\sigma \nabla \log p(x_t) = \sigma
    (\mu^2 P + \sigma^2 I)^{-1} (x_t - \mu m)`, computed with the eigendecomposition
    :math:`P = U \Lambda U^\top` (done once). Used to prove the posterior sampler exact.

    Args:
        mean: the trajectory mean ``(length, *state_shape)``.
        cov: its covariance over the flattened trajectory, ``(n, n)`` with ``n = mean.size``.
        sde: the noise schedule (default :class:`VPSDE`).
    """
    sde = VPSDE() if sde is None else sde
    mean = jnp.asarray(mean, jnp.float32)
    n = mean.size
    cov = jnp.asarray(cov)
    if cov.shape != (n, n):
        raise ValueError(f"cov must have shape {(n, n)} for a mean of shape {mean.shape}, got "
                         f"{cov.shape}")
    lam, U = jnp.linalg.eigh(cov)
    if not bool(jnp.all(lam > -1e-6 * jnp.max(jnp.abs(lam)))):
        raise ValueError("cov must be symmetric positive semi-definite")
    lam = jnp.clip(lam, 0.0).astype(jnp.float32)
    U = U.astype(jnp.float32)
    m = mean.reshape(-1)

    def eps(x: Array, t: Array) -> Array:
        mu, sigma = sde.mu(t), sde.sigma(t)
        r = x.reshape(-1) - mu * m
        return (sigma * (U @ ((U.T @ r) / (mu**2 * lam + sigma**2)))).reshape(x.shape)

    return eps


def _sample_impl(prior: TrajectoryPrior, key: Array, n: int) -> Array:
    return sample_trajectories(
        key, prior.eps, n, prior.event_shape, prior.sde, prior.steps, prior.corrections,
        prior.tau,
    )


_sample_jit = jax.jit(_sample_impl, static_argnums=(0, 2))


def _flow_log_prob(prior: TrajectoryPrior, x0: Array) -> Array:
    sde, eps = prior.sde, prior.eps
    n = x0.size

    def ratio(t):
        return sde.sigma(t) / sde.mu(t)

    def log_mu(t):
        return jnp.log(sde.mu(t))

    def f_div(x, t):
        mu = sde.mu(t)
        a = jax.grad(log_mu)(t)  # mu'/mu
        b = mu * jax.grad(ratio)(t)  # mu s'
        e, jvp = jax.linearize(lambda z: eps(z, t), x)
        basis = jnp.eye(n, dtype=x.dtype).reshape((n,) + x.shape)
        trace = jnp.sum(jax.vmap(lambda v: jnp.vdot(v, jvp(v)))(basis))
        return a * x + b * e, n * a + b * trace

    times = jnp.linspace(0.0, 1.0, prior.log_prob_steps + 1, dtype=jnp.float32)

    def step(carry, ts):
        x, acc = carry
        t, s = ts
        h = s - t
        f1, d1 = f_div(x, t)
        xp = x + h * f1
        f2, d2 = f_div(xp, s)
        return (x + 0.5 * h * (f1 + f2), acc + 0.5 * h * (d1 + d2)), None

    (x1, acc), _ = jax.lax.scan(step, (x0, jnp.zeros((), x0.dtype)), (times[:-1], times[1:]))
    s1 = sde.sigma(1.0)
    log_p1 = -0.5 * jnp.sum(x1**2) / s1**2 - n * jnp.log(s1) - 0.5 * n * jnp.log(2 * jnp.pi)
    return log_p1 + acc


_log_prob_jit = jax.jit(_flow_log_prob, static_argnums=0)
