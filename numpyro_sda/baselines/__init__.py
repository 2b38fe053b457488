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
