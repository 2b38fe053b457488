"""Lorenz-63 "lo" and "hi" (Rozet & Louppe, 2023, Section 5.1): SDA vs baselines, W1 to particles.

For each scenario, one truth and one observation set; SDA runs the NumPyro model with the
shipped window-5 prior (``pretrained.load("lorenz63")``) and its default settings, the bootstrap
particle smoother (the ground truth), EnKS and weak 4D-Var with the exact Markov prior. The table
gives RMSE, spread, spread/skill, CRPS and the Wasserstein-1 distance of each method's draws to an
independent particle run (``numpyro_sda.demo.run_demo``), in physical units.

    python examples/lorenz63.py            # small: 64 draws, 4096 particles, 64 SDA steps
    python examples/lorenz63.py --full     # 1024 draws, 16384 particles, SDA defaults
"""

from __future__ import annotations

import argparse

from numpyro_sda.comparison import to_markdown
from numpyro_sda.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="paper-size run")
    parser.add_argument("--out", default="out/lorenz63", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of truth, data and draws")
    args = parser.parse_args()
    settings = (dict(num_samples=1024, num_particles=16384) if args.full else
                dict(num_samples=64, num_particles=4096, steps=64))
    for scenario in ("lo", "hi"):
        res = run_demo(scenario=scenario, out=f"{args.out}/{scenario}", seed=args.seed,
                       verbose=False, **settings)
        cols = ["rmse", "spread", "spread_skill", "crps", "w1", "wall_time"]
        print(f"\n### Lorenz-63 '{scenario}'\n")
        print(to_markdown(res["table"][cols]))


if __name__ == "__main__":
    main()
