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
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu
from jax import Array

from numpyro_sda.baselines.timesplit import check_baseline_model, posterior_predictive
from numpyro_sda.markov import SpunUpInitial
from numpyro_sda.results import InferenceMethod
from numpyro_sda.tracing import trace_model

__all__ = ["FourDVar", "lbfgs_minimize"]


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
            ``jax.enable_x64``; results are returned as float32).

    ``get_samples()[site]`` has one draw (the MAP). ``sample_stats``: ``"cost"`` (final
    :math:`J`), ``"iterations"``, ``"grad_norm"``, ``"converged"`` (gradient or stall test met
    before ``max_iter``), ``"stalled"`` (the stall test stopped it).
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
    ) -> None:
        if int(max_iter) != max_iter or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        if not tol > 0:
            raise ValueError(f"tol must be positive, got {tol!r}")
        if precision not in ("float32", "float64"):
            raise ValueError(f"precision must be 'float32' or 'float64', got {precision!r}")
        if isinstance(init, str) and init not in ("mean", "sample"):
            raise ValueError(f"init must be 'mean', 'sample' or an array, got {init!r}")
        super().__init__(
            model, weak=bool(weak), max_iter=int(max_iter), tol=float(tol),
            ftol=(1e-7 if precision == "float32" else 0.0) if ftol is None else float(ftol),
            init=init if isinstance(init, str) else "array", precision=precision,
        )
        self.weak = bool(weak)
        self.init = init

    def _first_guess(self, key: Array, prior) -> Array:
        if not isinstance(self.init, str):
            x = jnp.asarray(self.init)
            if tuple(x.shape) != tuple(prior.event_shape):
                raise ValueError(
                    f"init must have shape {tuple(prior.event_shape)}, got {tuple(x.shape)}"
                )
            return x
        if self.init == "sample":
            return prior.sample(key)
        x0 = prior.initial.mean

        def step(x, _):
            nxt = prior.transition(x).mean
            return nxt, nxt

        _, rest = jax.lax.scan(step, x0, None, length=prior.length - 1)
        return jnp.concatenate([x0[None], rest])

    def run(self, rng_key: Array, *model_args: Any, **model_kwargs: Any) -> FourDVar:
        traced = trace_model(self.model, model_args, model_kwargs)
        prior = check_baseline_model(traced, "FourDVar")
        if isinstance(prior.initial, SpunUpInitial):
            raise ValueError(
                "FourDVar needs an initial-state density; the prior's initial state is "
                "spun up (sample-only): use markov_prior(length) without spinup"
            )
        k1, k2 = jax.random.split(rng_key)
        x_init = self._first_guess(k1, prior)
        weak, L = self.weak, prior.length
        dtype = jnp.float64 if self.settings["precision"] == "float64" else jnp.float32

        def propagate(x0):
            def step(x, _):
                nxt = prior.transition(x).mean
                return nxt, nxt

            _, rest = jax.lax.scan(step, x0, None, length=L - 1)
            return jnp.concatenate([x0[None], rest])

        def cost(z):
            if weak:
                x = z
                return -(prior.log_prob(x) + traced.log_likelihood(x))
            x = propagate(z)
            return -(prior.initial.log_prob(z) + traced.log_likelihood(x))

        max_iter, tol, ftol = (self.settings[k] for k in ("max_iter", "tol", "ftol"))

        @jax.jit
        def solve(z0):
            z, value, gnorm, it, gtol, stalled = lbfgs_minimize(cost, z0, max_iter, tol, ftol)
            x = z if weak else propagate(z)
            return x, value, gnorm, it, gtol, stalled

        with jax.enable_x64(dtype == jnp.float64):
            z0 = (x_init if weak else x_init[0]).astype(dtype)
            t0 = time.perf_counter()
            compiled = solve.lower(z0).compile()
            self.compile_time = time.perf_counter() - t0
            t0 = time.perf_counter()
            x, value, gnorm, it, gtol, stalled = jax.block_until_ready(compiled(z0))
            self.wall_time = time.perf_counter() - t0
            x = x.astype(jnp.float32)
            value, gnorm, it, gtol = float(value), float(gnorm), int(it), float(gtol)
            stalled = bool(stalled)
        if not jnp.all(jnp.isfinite(x)):
            raise ValueError("4D-Var diverged: the optimised trajectory contains non-finite values")
        self.prior_site = traced.prior_name
        self.observations = dict(traced.observed)
        self._samples = {traced.prior_name: x[None]}
        self.sample_stats = {
            "cost": jnp.asarray(value), "iterations": jnp.asarray(it),
            "grad_norm": jnp.asarray(gnorm), "converged": jnp.asarray(gnorm <= gtol or stalled),
            "stalled": jnp.asarray(stalled),
        }
        self.posterior_predictive = posterior_predictive(traced, k2, x[None])
        self.num_model_evals = it * L  # lower bound: line-search evaluations are not counted
        return self
