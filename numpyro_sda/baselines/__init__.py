"""Classical data-assimilation baselines on the user's own NumPyro model.

Each method takes the same model function as :class:`numpyro_sda.SDA`, with a
:class:`numpyro_sda.MarkovPrior` (known dynamics) as the trajectory site, is configured by its
constructor (algorithm settings, kept as a typed frozen dataclass in ``.settings``), and runs
through the driver of :class:`numpyro_sda.results.InferenceMethod`:
``run(rng_key, *args, num_samples=..., **kwargs)`` / ``get_samples()``.

* :class:`ParticleSmoother` — bootstrap particle filter, FFBSi or ancestral-tracing smoother
  (:class:`ParticleSettings`);
* :class:`EnKF`, :class:`EnKS` — ensemble Kalman filter / smoother (stochastic or square-root,
  inflation, Gaspari–Cohn localisation; :class:`EnsembleSettings`);
* :class:`FourDVar` — strong- and weak-constraint 4D-Var with L-BFGS (:class:`FourDVarSettings`);
* :class:`KalmanSmoother` — the exact posterior of linear-Gaussian models.

Several devices: like :class:`numpyro_sda.SDA`, the particle smoother and the ensemble Kalman
methods take ``mesh=`` (``None``: every visible device; ``False``: one; or a
:class:`jax.sharding.Mesh` with a ``"draws"`` axis) and split their particles / ensemble members
(and the smoothing draws) over it inside one jitted program
(:class:`numpyro_sda.parallel.EnsembleSharding`); the result equals the one-device run with
the same key to float rounding. 4D-Var has no ensemble axis (one trajectory, sequential
L-BFGS iterations), and the Kalman smoother's cost is its exact sequential recursions on
d x d matrices (its independent backward-sampling draws are not sharded): both run on one
device.
"""

from numpyro_sda.baselines.enkf import EnKF, EnKS, EnsembleSettings
from numpyro_sda.baselines.kalman import KalmanSettings, KalmanSmoother
from numpyro_sda.baselines.particle import ParticleSettings, ParticleSmoother
from numpyro_sda.baselines.var4d import FourDVar, FourDVarSettings

__all__ = [
    "EnKF",
    "EnKS",
    "EnsembleSettings",
    "FourDVar",
    "FourDVarSettings",
    "KalmanSettings",
    "KalmanSmoother",
    "ParticleSettings",
    "ParticleSmoother",
]
