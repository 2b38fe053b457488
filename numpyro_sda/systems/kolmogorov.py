r"""Two-dimensional Kolmogorov flow in vorticity form (exponax solver).

Incompressible Navier–Stokes on the periodic square :math:`[0, 2\pi)^2`, written for the
vorticity :math:`\omega`:

.. math:: \partial_t \omega + u \cdot \nabla \omega = \nu \Delta \omega - \alpha \omega + f_\omega,
          \qquad \Delta \psi = \omega, \quad u = (\partial_1 \psi, -\partial_0 \psi),

with viscosity :math:`\nu = 1/\mathrm{Re}`, :math:`\mathrm{Re} = 1000`, linear drag
:math:`\alpha = 0.1` and the Kolmogorov forcing of wavenumber 4, :math:`f_\omega = -4 \cos(4 x_1)`
(Chandler & Kerswell 2013; Kochkov et al. 2021; the Kolmogorov experiment of Rozet & Louppe 2023).
Axes follow exponax: the state is ``(1, n, n)`` (channel first), :math:`x_0` runs along the first
spatial axis and :math:`x_1` along the second. In these coordinates the state is
:math:`\omega = \partial_1 u_0 - \partial_0 u_1` and the velocity body force is
:math:`(-\sin 4 x_1, 0)`: the sin(4y) forcing (``y = x_1``) up to exponax's sign, i.e. up to the
translation :math:`y \to y + \pi/4`, which leaves the statistics unchanged.

The solver is ``exponax.stepper.KolmogorovFlowVorticity`` (pseudo-spectral, 2/3 de-aliasing,
exponential time-differencing Runge–Kutta). exponax writes the drag as :math:`+\lambda \omega`
with default :math:`\lambda = -0.1`; we pass ``drag = -alpha``.

Numerics (measured here, float32, CPU):

* **Simulation** runs at :math:`256^2` with ETDRK4 and 50 sub-steps of 0.004 per saved interval
  :math:`\Delta t = 0.2`. On the attractor :math:`\max |u| \approx 4`–5.6, so the Courant number
  :math:`\max|u|\,\delta t / \delta x` (:math:`\delta x = 2\pi/256`) is at most about 0.9.
  Measured stability limits: ETDRK4 with 40 sub-steps (CFL ~1.07) ran 300 saved states but
  ETDRK4 with 20 sub-steps and ETDRK3 with 40 sub-steps blew up; ETDRK2 blew up even with 80
  sub-steps, hence order 4.
  One 256² ETDRK4 step costs about 4 ms, so one saved state costs about 0.2 s per trajectory.
* **Coarsening** to :math:`64^2` is spectral truncation (``exponax.map_between_resolutions``:
  Fourier modes :math:`|k| < 32` kept, the Nyquist mode dropped), not mean pooling: it is exact on
  band-limited fields, so ``coarsen(refine(w)) == w`` for any Nyquist-free 64² field.
* **Transition** :meth:`KolmogorovFlow.step` (the deterministic part of ``markov_prior``'s
  transition, used by the particle / ensemble / 4D-Var baselines): by default a coarse model that
  runs the same exponax solver directly at :math:`64^2` (ETDRK4, 16 sub-steps of 0.0125; about
  4 ms per state, about 50x cheaper than the fine model; 10 sub-steps were stable over 8 x 500
  saved states). It is an under-resolved model of the 256² truth: its one-interval RMSE against
  the fine model is about 0.94 (0.2 standard deviations), so choose ``model_error`` >~ 1.
  Pass ``model_resolution=256`` for the faithful (and slow) refine → 256² step → truncate
  transition. Either way a ``model_error`` is required, since the system is deterministic.

Initial states: :meth:`initial_distribution` is the climatological Gaussian
:math:`\mathcal{N}(0, s^2)` independently at each 64² pixel (also the initial density of the
Markov prior). :meth:`simulate` draws from it, interpolates spectrally onto 256² (a band-limited
random field with the attractor's amplitude) and lets burn-in spin it up; the velocity reaches its
attractor level after about 30 saved states, and the reference protocol discards 64 (t = 12.8,
about one drag time 1/α = 10). Recommended ``burn_in = 64``.

Normalisation statistics (vorticity, per channel): mean 0 (exact: :meth:`simulate` starts every
fine field at zero domain mean, and neither the forcing nor the advection change the mean mode),
standard deviation 4.7 (4.68 over 4 trajectories x 48 states at 64² after 64 burn-in states;
per-trajectory values 4.56–4.77), checked against a fresh simulation by
``tests/test_pde_systems.py`` (slow). The time-mean velocity profile of the same run correlates at
0.89 with :math:`-\sin 4 x_1`, the body force above.
"""

from __future__ import annotations

import math
from functools import cached_property, partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array

from numpyro_sda.systems.base import DynamicalSystem, check_length, check_positive

__all__ = ["KolmogorovFlow"]

_DEFAULT_STD = 4.7


def _wavenumbers(n: int) -> tuple[Array, Array]:
    """Integer wavenumbers (k0 full, k1 half for rfft2) on a 2π-periodic n x n grid."""
    k0 = jnp.fft.fftfreq(n, 1.0 / n)[:, None]
    k1 = jnp.fft.rfftfreq(n, 1.0 / n)[None, :]
    return k0, k1


class KolmogorovFlow(DynamicalSystem):
    """Kolmogorov flow vorticity, simulated at ``sim_resolution``² and saved at ``resolution``².

    Args:
        reynolds: Reynolds number; the viscosity is ``1 / reynolds`` (domain :math:`2\\pi`,
            unit forcing amplitude).
        drag: linear drag coefficient :math:`\\alpha > 0` (the term :math:`-\\alpha\\omega`).
        forcing_mode: wavenumber of the Kolmogorov forcing (4).
        resolution: saved grid size :math:`n`; ``state_shape = (1, n, n)``.
        sim_resolution: grid size of the simulation (256).
        dt: time between saved states (0.2).
        substeps: solver steps per saved interval at ``sim_resolution`` (50).
        model_resolution: grid size at which :meth:`step` (the Markov-prior transition) runs:
            ``resolution`` for the fast coarse model (default) or ``sim_resolution`` for the
            faithful upsample → fine step → truncate model.
        model_substeps: solver steps per saved interval of the coarse model (16).
        noise_std: Gaussian transition noise std in physical units; ``None`` = deterministic.
        chunk_size: trajectories integrated together by :meth:`simulate` (bounds memory).
        std: override of the normalisation standard deviation (measured for the defaults).
    """

    def __init__(
        self,
        reynolds: float = 1000.0,
        drag: float = 0.1,
        forcing_mode: int = 4,
        resolution: int = 64,
        sim_resolution: int = 256,
        dt: float = 0.2,
        substeps: int = 50,
        model_resolution: int | None = None,
        model_substeps: int = 16,
        noise_std: float | None = None,
        chunk_size: int = 8,
        std: float | None = None,
    ) -> None:
        self.reynolds = check_positive("reynolds", reynolds)
        self.drag = check_positive("drag", drag)
        self.forcing_mode = check_length("forcing_mode", forcing_mode, 1)
        self.resolution = check_length("resolution", resolution, 8)
        self.sim_resolution = check_length("sim_resolution", sim_resolution, 8)
        if self.sim_resolution < self.resolution:
            raise ValueError(
                f"sim_resolution ({sim_resolution}) must be >= resolution ({resolution})"
            )
        if self.resolution % 2 or self.sim_resolution % 2:
            raise ValueError("resolution and sim_resolution must be even")
        self.dt = check_positive("dt", dt)
        self.substeps = check_length("substeps", substeps, 1)
        self.model_resolution = (
            self.resolution if model_resolution is None else int(model_resolution)
        )
        if self.model_resolution not in (self.resolution, self.sim_resolution):
            raise ValueError(
                f"model_resolution must be resolution ({self.resolution}) or sim_resolution "
                f"({self.sim_resolution}), got {model_resolution!r}"
            )
        self.model_substeps = check_length("model_substeps", model_substeps, 1)
        if noise_std is not None and (not np.isfinite(noise_std) or noise_std < 0):
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        self.noise_std = float(noise_std) if noise_std else None
        self.chunk_size = check_length("chunk_size", chunk_size, 1)
        self.state_shape = (1, self.resolution, self.resolution)
        s = check_positive("std", _DEFAULT_STD if std is None else std)
        self.mean = np.zeros((1, 1, 1), np.float32)
        self.std = np.full((1, 1, 1), s, np.float32)

    def _make_stepper(self, n: int, substeps: int):
        import exponax

        # concrete arrays even when first needed inside a jit trace (no leaked tracers)
        with jax.ensure_compile_time_eval():
            return exponax.stepper.KolmogorovFlowVorticity(
                2, 2.0 * math.pi, n, self.dt / substeps,
                diffusivity=1.0 / self.reynolds, drag=-self.drag,
                injection_mode=self.forcing_mode, injection_scale=1.0, order=4,
            )

    @cached_property
    def _fine(self):
        """exponax stepper at ``sim_resolution`` (built lazily: ETDRK4 set-up takes seconds)."""
        return self._make_stepper(self.sim_resolution, self.substeps)

    @cached_property
    def _coarse(self):
        """exponax stepper of the coarse model at ``resolution``."""
        return self._make_stepper(self.resolution, self.model_substeps)

    # ---------------------------------------------------------------- resolution maps
    def refine(self, w: Array) -> Array:
        """Spectral interpolation of ``(..., 1, n, n)`` fields onto the simulation grid."""
        import exponax

        return self._map(w, self.sim_resolution, exponax.map_between_resolutions)

    def coarsen(self, w: Array) -> Array:
        """Spectral truncation of ``(..., 1, N, N)`` fields onto the saved ``resolution`` grid."""
        import exponax

        return self._map(w, self.resolution, exponax.map_between_resolutions)

    @staticmethod
    def _map(w: Array, n: int, fn) -> Array:
        w = jnp.asarray(w)
        if w.ndim < 3 or w.shape[-3] != 1 or w.shape[-1] != w.shape[-2]:
            raise ValueError(f"expected vorticity fields (..., 1, N, N), got shape {w.shape}")
        if w.shape[-1] == n:
            return w
        flat = w.reshape(-1, *w.shape[-3:])
        out = jax.vmap(lambda v: fn(v, n))(flat)
        return out.reshape(*w.shape[:-3], *out.shape[-3:])

    # ---------------------------------------------------------------- velocity helpers
    @staticmethod
    def to_velocity(w: Array) -> Array:
        """Velocity :math:`(u_0, u_1) = (\\partial_1\\psi, -\\partial_0\\psi)`, :math:`\\Delta\\psi = \\omega`.

        Poisson solve in Fourier space on the :math:`2\\pi`-periodic grid; the velocity field
        that advects the vorticity in exponax's solver. ``(..., 1, n, n) -> (..., 2, n, n)``.
        """
        w = jnp.asarray(w)
        if w.ndim < 3 or w.shape[-3] != 1 or w.shape[-1] != w.shape[-2]:
            raise ValueError(f"to_velocity expects vorticity (..., 1, n, n), got {w.shape}")
        n = w.shape[-1]
        k0, k1 = _wavenumbers(n)
        lap = -(k0**2 + k1**2)
        w_hat = jnp.fft.rfft2(w[..., 0, :, :])
        psi_hat = w_hat / jnp.where(lap == 0, 1.0, lap) * (lap != 0)
        u0 = jnp.fft.irfft2(1j * k1 * psi_hat, s=(n, n))
        u1 = jnp.fft.irfft2(-1j * k0 * psi_hat, s=(n, n))
        return jnp.stack([u0, u1], axis=-3).astype(w.dtype)

    @staticmethod
    def from_velocity(u: Array) -> Array:
        """Vorticity :math:`\\omega = \\partial_1 u_0 - \\partial_0 u_1` (spectral derivatives).

        ``(..., 2, n, n) -> (..., 1, n, n)``; the inverse of :meth:`to_velocity` on
        divergence-free, zero-mean velocity fields.
        """
        u = jnp.asarray(u)
        if u.ndim < 3 or u.shape[-3] != 2 or u.shape[-1] != u.shape[-2]:
            raise ValueError(f"from_velocity expects velocity (..., 2, n, n), got {u.shape}")
        n = u.shape[-1]
        k0, k1 = _wavenumbers(n)
        u0_hat = jnp.fft.rfft2(u[..., 0, :, :])
        u1_hat = jnp.fft.rfft2(u[..., 1, :, :])
        w = jnp.fft.irfft2(1j * k1 * u0_hat - 1j * k0 * u1_hat, s=(n, n))
        return w[..., None, :, :].astype(u.dtype)

    # ---------------------------------------------------------------- dynamics
    def initial_distribution(self) -> dist.Distribution:
        """Climatological :math:`\\mathcal{N}(0, s^2)` independently at every saved pixel."""
        loc = jnp.broadcast_to(jnp.asarray(self.mean), self.state_shape)
        scale = jnp.broadcast_to(jnp.asarray(self.std), self.state_shape)
        return dist.Normal(loc, scale).to_event(3)

    def _fine_step(self, w: Array) -> Array:
        return jax.lax.fori_loop(0, self.substeps, lambda _, v: self._fine(v), w)

    def _coarse_step(self, w: Array) -> Array:
        return jax.lax.fori_loop(0, self.model_substeps, lambda _, v: self._coarse(v), w)

    def step(self, x: Array) -> Array:
        """Deterministic transition of ONE saved state ``(1, n, n)`` over ``dt``.

        Coarse model at ``resolution`` by default; with ``model_resolution == sim_resolution``,
        refine → fine solver → coarsen. A batch ``(..., 1, n, n)`` is vmapped.
        """
        x = self._check_state(x)
        if x.ndim > 3:
            return jax.vmap(self.step)(x.reshape(-1, *self.state_shape)).reshape(x.shape)
        if self.model_resolution == self.resolution:
            return self._coarse_step(x)
        return self.coarsen(self._fine_step(self.refine(x)))

    @partial(jax.jit, static_argnums=(0, 3, 4))
    def _rollout(self, x0: Array, keys: Array, length: int, burn_in: int) -> Array:
        """Fine-grid rollout of a batch of saved-resolution initial states."""

        def one(x, key):
            w = self.refine(x)
            w = w - jnp.mean(w)  # the domain mean is an invariant (up to drag): start at zero

            def advance(w, k):
                w = self._fine_step(w)
                if self.noise_std:
                    noise = jax.random.normal(k, self.state_shape, w.dtype) * self.noise_std
                    w = w + self.refine(noise)
                return w, None

            def advance_save(w, k):
                w, _ = advance(w, k)
                return w, self.coarsen(w)

            kb, kt = jax.random.split(key)
            w, _ = jax.lax.scan(advance, w, jax.random.split(kb, burn_in))
            first = self.coarsen(w)
            if length == 1:
                return first[None]
            _, rest = jax.lax.scan(advance_save, w, jax.random.split(kt, length - 1))
            return jnp.concatenate([first[None], rest], axis=0)

        return jax.vmap(one)(x0, keys).astype(jnp.float32)

    def simulate(
        self, key: Array, num_trajectories: int, length: int, burn_in: int = 0
    ) -> Array:
        """Simulate at ``sim_resolution``² and return trajectories saved at ``resolution``².

        Each initial state is drawn from :meth:`initial_distribution`, interpolated spectrally
        to the fine grid and set to zero domain mean; ``burn_in`` saved intervals are discarded,
        then ``length`` states are recorded (spectrally truncated). Trajectories are integrated
        in chunks of ``chunk_size`` to bound memory. Returns float32 ``(N, length, 1, n, n)``.
        """
        num = check_length("num_trajectories", num_trajectories, 1)
        length = check_length("length", length, 1)
        burn_in = check_length("burn_in", burn_in, 0)
        k0, k1 = jax.random.split(key)
        x0 = self.initial_distribution().sample(k0, (num,)).astype(jnp.float32)
        keys = jax.random.split(k1, num)
        out = [
            self._rollout(x0[a:a + self.chunk_size], keys[a:a + self.chunk_size], length, burn_in)
            for a in range(0, num, self.chunk_size)
        ]
        return out[0] if len(out) == 1 else jnp.concatenate(out, axis=0)

    def faithful_model(self) -> KolmogorovFlow:
        """The same system (physics, grids, normalisation, noise) whose Markov-prior transition
        runs at ``sim_resolution`` (refine, step the simulation grid, truncate), i.e. the model
        with no discretisation error: ``model_resolution=sim_resolution``."""
        return KolmogorovFlow(
            reynolds=self.reynolds, drag=self.drag, forcing_mode=self.forcing_mode,
            resolution=self.resolution, sim_resolution=self.sim_resolution, dt=self.dt,
            substeps=self.substeps, model_resolution=self.sim_resolution,
            model_substeps=self.model_substeps, noise_std=self.noise_std,
            chunk_size=self.chunk_size, std=float(self.std.ravel()[0]))

    def __hash__(self) -> int:
        return hash((type(self), self.reynolds, self.drag, self.forcing_mode, self.resolution,
                     self.sim_resolution, self.dt, self.substeps, self.model_resolution,
                     self.model_substeps, self.noise_std, float(self.std.ravel()[0])))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and hash(other) == hash(self)
