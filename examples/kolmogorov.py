"""Kolmogorov flow: the paper's scenarios (Rozet & Louppe, 2023, Section 5.2), figures and GIF.

Truth: ``KolmogorovFlow()`` (Re 1000, 64² vorticity saved every 0.2 time units, simulated at
256²) after 64 burn-in states. Scenarios (:mod:`numpyro_sda.scenarios`): ``coarse`` (8 x 8 block
means at every 4th state, noise 0.1), ``sparse`` (every 4th pixel at every 4th state, noise 0.1)
and ``saturating`` (``tanh(x/2)`` of every 2nd pixel at every 4th state, noise 0.05), normalised
units. SDA runs the NumPyro model with a Kolmogorov prior and its default settings; the
stochastic EnKS runs it with the coarse 64² Markov model (``model_error=1.0``; its one-step error
against the 256² truth is about 0.94). Figures: truth / observation / posterior mean / posterior
std panels per method and a vorticity GIF (matplotlib's ``pillow`` writer).

SDA uses the shipped ``pretrained.load("kolmogorov")`` (a 1.8 M-parameter UNet trained on a GPU
for 4750 steps; see :mod:`numpyro_sda.pretrained`) unless ``--prior FILE`` names another (e.g.
one trained with ``examples/train_kolmogorov.py``). On these 2-core CPUs one guided evaluation
of the shipped UNet on 2 x 9 states took about 1.3 s with ``lax.conv`` and about a fifth of that
since the UNet's convolutions are patch matrix products on CPU (``benchmarks/unet_cpu.py``: a
forward + VJP of 5 windows inside a loop, 1487 -> 292 ms); the small default still uses 1 correction.

    python examples/kolmogorov.py                        # small: 9 states, 'coarse', 2 draws, 8 steps
    python examples/kolmogorov.py --full   # 17 states, all scenarios (GPU)
"""

from __future__ import annotations

import argparse

from numpyro_sda.demo import run_kolmogorov_demo
from numpyro_sda.scenarios import KOLMOGOROV_SCENARIOS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="17 states, every scenario, 64 draws with SDA's defaults, 64-member "
                             "EnKS (meant for a GPU)")
    parser.add_argument("--prior", default=None, help="a Kolmogorov prior (.npz)")
    parser.add_argument("--scenario", choices=sorted(KOLMOGOROV_SCENARIOS), action="append",
                        dest="scenarios", help="scenario(s) (default: coarse; all with --full)")
    parser.add_argument("--out", default="out/kolmogorov", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of truth, data and draws")
    args = parser.parse_args()
    scenarios = args.scenarios or (list(KOLMOGOROV_SCENARIOS) if args.full else ["coarse"])
    settings = (dict(length=17, num_samples=64, ensemble_size=64) if args.full else
                dict(length=9, num_samples=2, ensemble_size=16, steps=8, corrections=1))
    for name in scenarios:
        res = run_kolmogorov_demo(scenario=name, out=f"{args.out}/{name}", seed=args.seed,
                                  prior_path=args.prior, require_prior=False, **settings)
        print(f"{name}: {', '.join(res['files'])}")


if __name__ == "__main__":
    main()
