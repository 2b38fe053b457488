r"""Strong- and weak-constraint 4D-Var: the MAP trajectory of the user's model.

Weak-constraint 4D-Var (Trémolet, 2006) minimises the negative log-joint over the whole
trajectory, the model-error term being the transition density of the Markov prior:

.. math:: J(x_{0:L-1}) = -\log p(x_0) - \sum_{t \ge 1} \log p(x_t \mid x_{t-1}) - \log p(y \mid x).

Strong-constraint 4D-Var (Le Dimet & Talagrand, 1986) assumes a perfect model: the trajectory
is the deterministic propagation :math:`x_{t+1} = \mathbb{E}[x_{t+1} \mid x_t]` (the mean of the
prior's transition) of the initial state, and only :math:`x_0` is optimised:

.. math:: J(x_0) = -\log p(x_0) - \log p(y \mid \mathcal{M}_{0:L-1}(x_0)).

Both costs are differentiated by JAX through the user's observation model and minimised with
L-BFGS (Liu & Nocedal, 1989; ``optax.lbfgs`` with a zoom line search) inside one
``lax.while_loop``. For a linear-Gaussian model the weak-constraint minimiser is the Kalman
smoother mean.

Devices: 4D-Var has no ensemble or draws axis to shard -- it optimises one trajectory, and
every L-BFGS iteration (cost, gradient, line search) depends on the previous one -- so it takes
no ``mesh=`` and runs on the default device, unlike the particle smoother and the ensemble
Kalman methods, whose members are split over a device mesh.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jax import Array

from numpyro_sda.baselines.timesplit import check_baseline_model, posterior_predictive
from numpyro_sda.markov import SpunUpInitial
from numpyro_sda.results import InferenceMethod, check_choice, check_int, check_real
from numpyro_sda.tracing import TracedModel

__all__ = [
    "FourDVar",
    "FourDVarSettings",
    "fourdvar_cost",
    "lbfgs_minimize",
    "mean_trajectory",
]


def lbfgs_minimize(
    f, x0: Array, max_iter: int, tol: float, ftol: float = 0.0, memory_size: int = 20,
    patience: int = 5,
):
    """Minimise ``f`` from ``x0`` with optax L-BFGS.

    Stops when ``|g| <= tol * max(|g0|, 1)`` (gradient test), or when the cost has decreased by
    less than ``ftol * max(|f|, 1)`` for ``patience`` consecutive iterations (stall test, the
    useful criterion in float32, where the gradient test may be out of reach), or after
    ``max_iter`` iterations. Returns ``(x, cost, grad_norm, iterations, gtol, stalled)``.
    """
    opt = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(f)
    v0, g0 = jax.value_and_grad(f)(x0)
    gtol = tol * jnp.maximum(otu.tree_norm(g0), 1.0)

    def step(carry):
        x, state, prev, stall = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        x = optax.apply_updates(x, updates)
        new = otu.tree_get(state, "value")
        small = (prev - new) <= ftol * jnp.maximum(jnp.abs(new), 1.0)
        return x, state, new, jnp.where(small, stall + 1, 0)

    def cont(carry):
        _, state, _, stall = carry
        it = otu.tree_get(state, "count")
        g = otu.tree_get(state, "grad")
        running = (it < max_iter) & (otu.tree_norm(g) > gtol) & (stall < patience)
        return (it == 0) | running

    init = (x0, opt.init(x0), v0, jnp.zeros((), jnp.int32))
    x, state, _, stall = jax.lax.while_loop(cont, step, init)
    value, grad = jax.value_and_grad(f)(x)
    return x, value, otu.tree_norm(grad), otu.tree_get(state, "count"), gtol, stall >= patience


@dataclass(frozen=True)
class FourDVarSettings:
    """Settings of :class:`FourDVar` (validated on construction; see its docstring).

    ``ftol=None`` resolves to 1e-7 in float32 and 0 (off) in float64; ``init`` is ``"mean"``,
    ``"sample"`` or an array of shape ``(L, *state_shape)``.
    """

    weak: bool = True
    max_iter: int = 1000
    tol: float = 1e-5
    ftol: float | None = None
    init: Any = "mean"
    precision: str = "float32"

    def __post_init__(self) -> None:
        f = object.__setattr__
        if not isinstance(self.weak, bool | np.bool_):
            raise TypeError(f"weak must be a bool, got {self.weak!r}")
        f(self, "weak", bool(self.weak))
        f(self, "max_iter", check_int("max_iter", self.max_iter, 1))
        f(self, "tol", check_real("tol", self.tol, low=0, low_open=True))
        check_choice("precision", self.precision, ("float32", "float64"))
        if self.ftol is None:
            f(self, "ftol", 1e-7 if self.precision == "float32" else 0.0)
        f(self, "ftol", check_real("ftol", self.ftol, low=0))
        if isinstance(self.init, str):
            check_choice("init", self.init, ("mean", "sample"))
        elif not hasattr(self.init, "shape"):
            raise TypeError(f"init must be 'mean', 'sample' or an array, got {self.init!r}")


def mean_trajectory(prior, x0: Array) -> Array:
    r"""The deterministic propagation :math:`x_{t+1} = \mathbb{E}[x_{t+1} \mid x_t]` of ``x0``."""

    def step(x, _):
        nxt = prior.transition(x).mean
        return nxt, nxt

    _, rest = jax.lax.scan(step, x0, None, length=prior.length - 1)
    return jnp.concatenate([x0[None], rest])


def fourdvar_cost(prior, log_likelihood, weak: bool):
    """The 4D-Var cost :math:`J` of the module docstring, as a function of the optimised
    variable (the whole trajectory when ``weak``, else the initial state), in that
    variable's dtype."""

    def cost(z):
        if weak:
            J = -(prior.log_prob(z) + log_likelihood(z))
        else:
            J = -(prior.initial.log_prob(z) + log_likelihood(mean_trajectory(prior, z)))
        return J.astype(z.dtype)  # float64 model parameters must not promote the optimiser

    return cost


def _precision(dtype: Any) -> contextlib.AbstractContextManager:
    """``jax.enable_x64(True)`` for float64. For float32, x64 is switched off only when it is
    globally off already: with ``jax_enable_x64`` set globally the model's parameters are float64
    arrays, which cannot be traced with x64 switched off (lax dtype errors), so the float32 first
    guess is then promoted by the model as everywhere else in the program."""
    if dtype == jnp.float64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


class _Prepared(NamedTuple):
    compiled: Any
    z0: Array
    traced: TracedModel
    dtype: Any


class FourDVar(InferenceMethod):
    """4D-Var on the user's NumPyro model (MAP trajectory by L-BFGS).

    Args:
        model: the user's model with a ``MarkovPrior`` trajectory site whose initial state has a
            density (not ``spun_up``).
        weak: weak constraint (optimise the whole trajectory; default) or strong (initial state
            only, deterministic propagation with the transition mean).
        max_iter: maximum L-BFGS iterations.
        tol: stop when the gradient norm falls below ``tol * max(|g_0|, 1)``.
        ftol: stop when the cost decreases by less than ``ftol * max(|J|, 1)`` over 5
            consecutive iterations (default: 1e-7 in float32, 0 (off) in float64).
        init: first guess: ``"mean"`` (the prior's deterministic mean trajectory), ``"sample"`` (a
            prior draw, using the run key) or an array of shape ``(L, *state_shape)``.
        precision: ``"float32"`` or ``"float64"`` (the optimisation runs under
            ``jax.enable_x64``; results are returned as float32). With ``jax_enable_x64`` set
            globally, ``"float32"`` starts from a float32 first guess and the model's float64
            parameters promote the computation.
        settings: a :class:`FourDVarSettings` instead of the keywords above.

    ``get_samples()[site]`` has one draw (the MAP; ``run`` accepts ``num_samples=1`` only).
    ``sample_stats``: ``"cost"`` (final :math:`J`), ``"iterations"``, ``"grad_norm"``,
    ``"converged"`` (gradient or stall test met before ``max_iter``), ``"stalled"`` (the stall
    test stopped it).
    """

    method = "4D-Var"

    def __init__(
        self,
        model,
        weak: bool = True,
        *,
        max_iter: int = 1000,
        tol: float = 1e-5,
        ftol: float | None = None,
        init: str | Array = "mean",
        precision: str = "float32",
        settings: FourDVarSettings | None = None,
    ) -> None:
        if settings is None:
            settings = FourDVarSettings(weak, max_iter, tol, ftol, init, precision)
        elif not isinstance(settings, FourDVarSettings):
            raise TypeError(f"settings must be a FourDVarSettings, got {type(settings).__name__}")
        super().__init__(model, settings)

    def default_num_samples(self, traced: TracedModel) -> int:
        return 1

    def _check_model(self, traced: TracedModel) -> None:
        prior = check_baseline_model(traced, "FourDVar")
        if isinstance(prior.initial, SpunUpInitial):
            raise ValueError(
                "FourDVar needs an initial-state density; the prior's initial state is "
                "spun up (sample-only): use markov_prior(length) without spinup"
            )

    def _first_guess(self, key: Array, prior) -> Array:
        init = self.settings.init
        if not isinstance(init, str):
            x = jnp.asarray(init)
            if tuple(x.shape) != tuple(prior.event_shape):
                raise ValueError(
                    f"init must have shape {tuple(prior.event_shape)}, got {tuple(x.shape)}"
                )
            return x
        if init == "sample":
            return prior.sample(key)
        return mean_trajectory(prior, prior.initial.mean)

    def _prepare(self, traced: TracedModel, rng_key: Array, num_samples: int) -> _Prepared:
        if num_samples != 1:
            raise ValueError(f"FourDVar returns one MAP trajectory: num_samples must be 1, got "
                             f"{num_samples}")
        s, prior = self.settings, traced.prior
        x_init = self._first_guess(rng_key, prior)
        dtype = jnp.float64 if s.precision == "float64" else jnp.float32
        cost = fourdvar_cost(prior, traced.log_likelihood, s.weak)

        @jax.jit
        def solve(z0):
            z, value, gnorm, it, gtol, stalled = lbfgs_minimize(cost, z0, s.max_iter, s.tol, s.ftol)
            x = z if s.weak else mean_trajectory(prior, z)
            return x, value, gnorm, it, gtol, stalled

        with _precision(dtype):
            z0 = (x_init if s.weak else x_init[0]).astype(dtype)
            compiled = solve.lower(z0).compile()
        return _Prepared(compiled, z0, traced, dtype)

    def _draw(self, state: _Prepared, rng_key: Array, num_samples: int) -> tuple[dict, dict]:
        with _precision(state.dtype):
            x, value, gnorm, it, gtol, stalled = jax.block_until_ready(state.compiled(state.z0))
            x = x.astype(jnp.float32)
            value, gnorm, it, gtol = float(value), float(gnorm), int(it), float(gtol)
            stalled = bool(stalled)
        stats = {
            "cost": jnp.asarray(value), "iterations": jnp.asarray(it),
            "grad_norm": jnp.asarray(gnorm), "converged": jnp.asarray(gnorm <= gtol or stalled),
            "stalled": jnp.asarray(stalled),
        }
        return {state.traced.prior_name: x[None]}, stats

    def _finish(self, state: _Prepared, samples: dict, stats: dict) -> None:
        if not bool(jnp.all(jnp.isfinite(samples[state.traced.prior_name]))):
            raise ValueError("4D-Var diverged: the optimised trajectory contains non-finite values")

    def _num_model_evals(self, state: _Prepared, num_samples: int) -> int:
        # lower bound: line-search evaluations are not counted
        return int(self.sample_stats["iterations"]) * state.traced.prior.length

    def _posterior_predictive(self, traced: TracedModel, rng_key: Array, samples: dict) -> dict:
        return posterior_predictive(traced, rng_key, samples[traced.prior_name])
