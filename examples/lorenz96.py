"""Lorenz-96 (32 variables, F = 16): SDA vs the localised EnKS vs weak 4D-Var.

Truth: 65 states of ``Lorenz96()`` after 1024 burn-in transitions; every 2nd variable of every
4th state is observed with Gaussian noise 0.1 (normalised units), one NumPyro model. The baselines
use the exact Markov prior (``system.markov_prior(65)``, the system's own model noise); EnKS is
the localised square-root filter (64 members, Gaspari–Cohn half-width 4, inflation 1.02).

No Lorenz-96 prior is shipped. SDA runs when a prior is given (``--prior FILE``) or trained here
(``--train SECONDS``: an MLP local score on windows of 5 states trained for that wall time on
fresh simulations; ``--full`` trains for 600 s); otherwise the script says so and compares the
baselines only.

    python examples/lorenz96.py                    # baselines only (about a minute)
    python examples/lorenz96.py --train 180        # + SDA with a 3-minute prior
    python examples/lorenz96.py --full             # 10-minute prior, 256 draws
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

from numpyro_sda import SDA, TrajectoryPrior, data, systems
from numpyro_sda.baselines import EnKS, FourDVar
from numpyro_sda.checkpoint import load_score
from numpyro_sda.comparison import compare, to_markdown
from numpyro_sda.score import LocalScore
from numpyro_sda.train import train_score

LENGTH = 65


def model(prior, y=None):
    """Every 2nd variable of every 4th state, Gaussian noise 0.1 (normalised units)."""
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[::4, ::2], 0.1).to_event(2), obs=y)


def train_prior(system, seconds: float, seed: int = 0) -> LocalScore:
    """A Lorenz-96 MLP local score (window 5, width 256, depth 3) trained for ``seconds``."""
    splits = data.simulate(system, seed, 256, 256, burn_in=1024, splits=(0.9, 0.1))
    score = LocalScore.mlp(system.n, window=5, hidden=256, depth=3, rngs=seed)
    # the steps are sized so that the learning rate decays within the budget at ~20 steps/s;
    # the time limit stops it otherwise (the validation loss is printed either way)
    res = train_score(score, splits["train"], splits["valid"], steps=int(20 * seconds),
                      chunk=200, progress=False, time_limit=seconds, seed=seed,
                      normalization=(system.mean, system.std))
    print(f"trained a Lorenz-96 prior: {res.step} steps in {res.elapsed:.0f} s "
          f"({res.stop_reason}), validation loss {res.history['valid_loss'][-1]:.4f}")
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="paper-size run")
    parser.add_argument("--prior", default=None, help="a saved Lorenz-96 prior (.npz)")
    parser.add_argument("--train", type=float, default=None,
                        help="train a prior for this many seconds (default: none; 600 with --full)")
    parser.add_argument("--samples", type=int, default=None, help="SDA draws / EnKS members")
    parser.add_argument("--seed", type=int, default=0, help="seed of truth and observations")
    args = parser.parse_args()
    samples = args.samples or (256 if args.full else 64)
    train = args.train if args.train is not None else (600.0 if args.full else None)

    system = systems.Lorenz96()
    k_truth, k_obs, k_sda, k_enks, k_var = jax.random.split(jax.random.PRNGKey(args.seed), 5)
    truth = system.normalize(system.simulate(k_truth, 1, LENGTH, burn_in=1024)[0])
    y = truth[::4, ::2] + 0.1 * jax.random.normal(k_obs, truth[::4, ::2].shape)
    markov = system.markov_prior(LENGTH)
    results = {}
    score = load_score(args.prior) if args.prior else (
        train_prior(system, train, args.seed) if train else None)
    if score is None:
        print("no Lorenz-96 prior: SDA skipped (pass --prior FILE or --train SECONDS)")
    else:
        t0 = time.perf_counter()
        kw = {} if args.full else {"steps": 64}
        results["SDA"] = SDA(model, progress=False, **kw).run(
            k_sda, TrajectoryPrior(score, length=LENGTH), y=y, num_samples=samples)
        print(f"SDA: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    results["EnKS"] = EnKS(model, 64, variant="sqrt", localization=4.0, inflation=1.02,
                           rotate=True).run(k_enks, markov, y=y)
    init = np.asarray(results["EnKS"].get_samples()["x"]).mean(0)
    results["4D-Var"] = FourDVar(model, weak=True, init=init, max_iter=1000).run(k_var, markov,
                                                                                 y=y)
    print(f"EnKS + 4D-Var: {time.perf_counter() - t0:.1f} s")
    table = compare(results, truth=truth, system=system)
    print(to_markdown(table[["draws", "rmse", "spread", "spread_skill", "crps", "wall_time"]]))


if __name__ == "__main__":
    main()
