"""The paper's Lorenz-63 posterior-quality protocol (Rozet & Louppe, 2023, Section 5.1).

For each scenario ("lo": the first normalised component every 8 states with noise 0.05; "hi":
every state with noise 0.25) and each of ``num_sets`` observation sets:

* a true trajectory of 65 states (``Lorenz63().simulate`` after 1024 burn-in transitions,
  normalised) and its observation ``y``;
* the ground truth: two independent 16384-particle bootstrap smoothers started from the prior
  after 64 transitions (``markov_prior(65, spinup=64)``), ``num_draws`` draws each; W1 between
  the two is the noise floor;
* a method's ``num_draws`` draws are scored by W1 (exact EMD, whole trajectories, physical
  units) to the first ground-truth set, by spread/skill against the truth, by the spread ratio
  against the ground truth and by CRPS against the truth.

Ground truths are cached under ``out/bench/groundtruth`` (atomic ``.npz`` writes) so that
configurations can be compared on the same observation sets without recomputing them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

from numpyro_sda import metrics
from numpyro_sda.baselines import ParticleSmoother
from numpyro_sda.systems import Lorenz63

LENGTH = 65
SCENARIOS = {"lo": (8, 0.05), "hi": (1, 0.25)}
CACHE = Path(os.environ.get("NUMPYRO_SDA_BENCH_CACHE", "out/bench/groundtruth"))


def make_model(every: int, noise: float):
    """The scenario's NumPyro model on normalised states."""

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::every, :1], noise), obs=y)

    return model


def w1(a: np.ndarray, b: np.ndarray) -> float:
    """Exact EMD between two equally weighted sets of whole trajectories (Euclidean cost):
    :func:`numpyro_sda.metrics.wasserstein1`."""
    return metrics.wasserstein1(a, b)


@dataclass
class Case:
    scenario: str
    index: int
    model: object
    x_true: np.ndarray  # normalised (65, 3)
    y: np.ndarray
    gt: np.ndarray  # physical (num_draws, 65, 3)
    floor: float
    gt_spread: float
    gt2: np.ndarray | None = None  # the independent second smoother's draws (the floor's)


def _save_atomic(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def case(scenario: str, index: int, num_draws: int = 1024, particles: int = 16384) -> Case:
    """Observation set ``index`` of ``scenario`` with its (cached) particle ground truth."""
    every, noise = SCENARIOS[scenario]
    system = Lorenz63()
    model = make_model(every, noise)
    path = CACHE / f"{scenario}_{index}_{num_draws}_{particles}.npz"
    if path.is_file():
        d = np.load(path)
        return Case(scenario, index, model, d["x_true"], d["y"], d["gt"], float(d["floor"]),
                    float(d["gt_spread"]), d["gt2"] if "gt2" in d else None)
    key = jax.random.fold_in(jax.random.key(2023), index)
    k_truth, k_obs, k_pf1, k_pf2 = jax.random.split(key, 4)
    x_true = system.normalize(system.simulate(k_truth, 1, LENGTH, burn_in=1024)[0])
    clean = x_true[::every, :1]
    y = clean + noise * jax.random.normal(k_obs, clean.shape)
    mp = system.markov_prior(LENGTH, spinup=64)
    draws = []
    for k in (k_pf1, k_pf2):
        pf = ParticleSmoother(model, num_particles=particles)
        draws.append(np.asarray(system.denormalize(
            pf.run(k, mp, y=y, num_samples=num_draws).get_samples()["x"])))
    floor = w1(draws[0], draws[1])
    gt_spread = float(metrics.spread(draws[0]))
    _save_atomic(path, x_true=np.asarray(x_true), y=np.asarray(y), gt=draws[0], floor=floor,
                 gt_spread=gt_spread, gt2=draws[1])
    return Case(scenario, index, model, np.asarray(x_true), np.asarray(y), draws[0], floor,
                gt_spread, draws[1])


def floor_at(c: Case, n: int) -> float:
    """The noise floor at ``n`` draws: the mean W1 of disjoint ``n``-draw blocks of the second,
    independent smoother to the ground truth, i.e. what an exact sampler of ``n`` draws scores.
    W1 from ``n`` < ``len(gt)`` draws is biased upwards, so ``W1 / floor_at(n)`` is the ratio
    that compares a method's ``n`` draws with exact draws of the same size."""
    if n >= len(c.gt):
        return c.floor
    if c.gt2 is None:
        return float("nan")
    blocks = [c.gt2[i:i + n] for i in range(0, len(c.gt2) - n + 1, n)]
    return float(np.mean([w1(b, c.gt) for b in blocks]))


def score(c: Case, xs_normalised: np.ndarray) -> dict[str, float]:
    """W1 to the ground truth, spread/skill and CRPS against the truth, spread vs ground truth;
    ``ratio_n``: W1 over the floor at the same number of draws (:func:`floor_at`)."""
    system = Lorenz63()
    xs = np.asarray(system.denormalize(xs_normalised))
    truth = np.asarray(system.denormalize(c.x_true))
    finite = np.all(np.isfinite(xs.reshape(len(xs), -1)), axis=1)
    out = {"finite": float(finite.mean())}
    if not finite.all():
        out.update(w1=float("nan"), ratio=float("nan"), ratio_n=float("nan"),
                   floor_n=float("nan"), ss=float("nan"), crps=float("nan"),
                   spread_vs_gt=float("nan"), rmse=float("nan"))
        return out
    d = w1(xs, c.gt)
    floor_n = floor_at(c, len(xs))
    out.update(
        w1=d,
        ratio=d / c.floor,
        floor_n=floor_n,
        ratio_n=d / floor_n,
        ss=float(metrics.spread_skill_ratio(xs, truth)),
        crps=float(metrics.crps(xs, truth)),
        rmse=float(metrics.rmse(xs, truth)),
        spread_vs_gt=float(metrics.spread(xs)) / c.gt_spread,
    )
    return out
