"""Classical data-assimilation baselines on the user's own NumPyro model.

Each method takes the same model function as :class:`numpyro_sda.SDA`, with a
:class:`numpyro_sda.MarkovPrior` (known dynamics) as the trajectory site, and follows the
``run(rng_key, *args, **kwargs)`` / ``get_samples()`` convention of
:class:`numpyro_sda.results.InferenceMethod`:

* :class:`ParticleSmoother` — bootstrap particle filter, ancestral-tracing or FFBSi smoother;
* :class:`EnKF`, :class:`EnKS` — ensemble Kalman filter / smoother (stochastic or square-root,
  inflation, Gaspari–Cohn localisation);
* :class:`FourDVar` — strong- and weak-constraint 4D-Var with L-BFGS;
* :class:`KalmanSmoother` — the exact posterior of linear-Gaussian models.
"""

from numpyro_sda.baselines.enkf import EnKF, EnKS
from numpyro_sda.baselines.kalman import KalmanSmoother
from numpyro_sda.baselines.particle import ParticleSmoother
from numpyro_sda.baselines.var4d import FourDVar

__all__ = ["EnKF", "EnKS", "FourDVar", "KalmanSmoother", "ParticleSmoother"]
