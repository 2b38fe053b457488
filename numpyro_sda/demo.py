"""The main job: the paper's Lorenz-63 assimilation, SDA against the classical baselines.

Protocol (Rozet & Louppe, 2023, Section 5.1; DESIGN.md §5): a 65-state trajectory of the noisy
Lorenz-63 system after 1024 burn-in transitions is the truth; the "lo" scenario observes the
first normalised component every 8 states with noise std 0.05, the "hi" scenario every state
with noise std 0.25. One NumPyro model is written once; SDA runs it with the shipped pretrained
window-5 prior, the bootstrap particle smoother (16384 particles, started from the prior after
64 transitions, the paper's ground truth), EnKS and weak-constraint 4D-Var with the exact
Markov prior. A second independent particle run gives the Wasserstein noise floor.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

__all__ = ["run_demo", "lorenz63_scenario", "lorenz63_model"]

SCENARIOS = {"lo": (8, 0.05), "hi": (1, 0.25)}
LENGTH = 65


def lorenz63_model(prior, y=None, every: int = 8, noise: float = 0.05):
    """The paper's observation model: the first normalised component every ``every`` states."""
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[::every, :1], noise).to_event(2), obs=y)


def lorenz63_scenario(key, scenario: str = "lo", length: int = LENGTH):
    """Simulate the truth (normalised, ``(length, 3)``) and its observations for a scenario."""
    from numpyro_sda.systems import Lorenz63

    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {sorted(SCENARIOS)}")
    every, noise = SCENARIOS[scenario]
    system = Lorenz63()
    k_truth, k_obs = jax.random.split(key)
    truth = system.normalize(system.simulate(k_truth, 1, length, burn_in=1024)[0])
    clean = truth[::every, :1]
    y = clean + noise * jax.random.normal(k_obs, clean.shape)
    return system, truth, y, every, noise


def run_demo(
    scenario: str = "lo",
    out: str | Path = "out/demo",
    num_samples: int = 256,
    steps: int = 256,
    corrections: int = 1,
    guidance: str = "sda",
    num_particles: int = 16384,
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    """Run the demo; returns ``{"table": DataFrame, "results": {...}}`` and writes ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from numpyro_sda import pretrained
    from numpyro_sda.arviz_export import to_inference_data
    from numpyro_sda.baselines import EnKS, FourDVar, ParticleSmoother
    from numpyro_sda.comparison import compare, to_markdown
    from numpyro_sda.infer import SDA
    from numpyro_sda.plots import plot_trajectories
    from numpyro_sda.prior import TrajectoryPrior

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = print if verbose else (lambda *a, **k: None)
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    system, truth, y, every, noise = lorenz63_scenario(keys[0], scenario)

    def model(prior, y=None):
        lorenz63_model(prior, y, every=every, noise=noise)

    log(f"Lorenz-63 '{scenario}': {LENGTH} states, y = x[::{every}, :1] + N(0, {noise}^2), "
        f"{y.size} observations")
    score = pretrained.load("lorenz63")
    prior = TrajectoryPrior(score, length=LENGTH)
    markov = system.markov_prior(LENGTH)
    spun_up = system.markov_prior(LENGTH, spinup=64)

    results = {}
    t0 = time.perf_counter()
    results["SDA"] = SDA(model, steps=steps, corrections=corrections, tau=0.25,
                         guidance=guidance, gamma=3e-2).run(keys[1], prior, y=y,
                                                            num_samples=num_samples)
    log(f"SDA ({guidance}, {steps} steps, C={corrections}): {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    results["BPF"] = ParticleSmoother(model, num_particles=num_particles,
                                      num_samples=num_samples).run(keys[2], spun_up, y=y)
    reference = ParticleSmoother(model, num_particles=num_particles,
                                 num_samples=num_samples).run(keys[3], spun_up, y=y)
    log(f"bootstrap particle smoother x2 ({num_particles} particles): "
        f"{time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    results["EnKS"] = EnKS(model, ensemble_size=num_samples).run(keys[4], markov, y=y)
    # 4D-Var is warm-started from the EnKS mean (from the prior mean it falls into a local
    # minimum of the weak-constraint cost on chaotic Lorenz-63: RMSE ~15 instead of ~0.6)
    enks_mean = results["EnKS"].get_samples()["x"].mean(0)
    results["4D-Var"] = FourDVar(model, weak=True, init=enks_mean, max_iter=2000).run(
        keys[5], markov, y=y)
    log(f"EnKS + weak 4D-Var: {time.perf_counter() - t0:.1f} s")

    table = compare(results, truth=truth, reference=reference, system=system,
                    model_args=(markov,), model_kwargs={"y": y}, prior=markov)
    log("\nComparison (physical units; W1 to an independent 16384-particle ground-truth run):")
    log(table.to_string())
    (out / "comparison.md").write_text(to_markdown(table) + "\n")

    fig = plot_trajectories(results["SDA"].get_samples()["x"], truth=truth, observations=y,
                            obs_times=np.arange(0, LENGTH, every), obs_states=[0],
                            system=system, state_names=["x", "y", "z"],
                            title=f"SDA posterior, Lorenz-63 '{scenario}'")
    fig.savefig(out / "sda_trajectories.png", dpi=110)
    plt.close(fig)
    fig = plot_trajectories(results["BPF"].get_samples()["x"], truth=truth, observations=y,
                            obs_times=np.arange(0, LENGTH, every), obs_states=[0],
                            system=system, state_names=["x", "y", "z"], color="C1",
                            title=f"Particle ground truth, Lorenz-63 '{scenario}'")
    fig.savefig(out / "bpf_trajectories.png", dpi=110)
    plt.close(fig)
    idata = to_inference_data(results["SDA"])
    idata.to_netcdf(str(out / "sda.nc"))
    (out / "settings.json").write_text(json.dumps(
        {"scenario": scenario, "num_samples": num_samples, "steps": steps,
         "corrections": corrections, "guidance": guidance, "num_particles": num_particles,
         "seed": seed, "observations": np.asarray(y).ravel().tolist(),
         "truth": np.asarray(truth).tolist()}, indent=1))
    log(f"\nwrote {out}/comparison.md, sda_trajectories.png, bpf_trajectories.png, sda.nc")
    return {"table": table, "results": results, "reference": reference, "truth": truth,
            "y": jnp.asarray(y)}
