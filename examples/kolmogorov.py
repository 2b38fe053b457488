"""Kolmogorov flow: the paper's scenarios (Rozet & Louppe, 2023, Section 5.2), figures and GIF.

Truth: ``KolmogorovFlow()`` (Re 1000, 64² vorticity saved every 0.2 time units, simulated at
256²) after 64 burn-in states. Scenarios (:mod:`numpyro_sda.scenarios`): ``coarse`` (8 x 8 block
means at every 4th state, noise 0.1), ``sparse`` (every 4th pixel at every 4th state, noise 0.1)
and ``saturating`` (``tanh(x/2)`` of every 2nd pixel at every 4th state, noise 0.05), normalised
units. SDA runs the NumPyro model with a Kolmogorov prior and its default settings; the
stochastic EnKS runs it with the coarse 64² Markov model (``model_error=1.0``; its one-step error
against the 256² truth is about 0.94). Figures: truth / observation / posterior mean / posterior
std panels per method and a vorticity GIF (matplotlib's ``pillow`` writer).

SDA uses the shipped ``pretrained.load("kolmogorov")`` (a 0.28 M-parameter UNet trained on
these CPUs in 64 minutes, ``examples/train_kolmogorov.py --config cpu``; see
:mod:`numpyro_sda.pretrained`) unless ``--prior FILE`` names another. On these 2-core CPUs the
UNet's convolutions run as patch matrix products (``benchmarks/unet_cpu.py``); the small default
uses 1 correction.

The EnKS rows are the stochastic EnKS with 32 members, spun up from the climatological Gaussian
through 64 transitions of the coarse 64² model, with Gaspari–Cohn localisation on the 64² torus
(half-width 8 pixels) and inflation 1.1, then forecast by
* the coarse 64² model (model error: its one-interval error is 0.2 standard deviations; noise
  1.0): ``--tune`` (2 held-out 'sparse' sets, keys ``fold_in(PRNGKey(1000), i)``; 555 s;
  ``benchmarks/results/kolmogorov_enks_tuning_2026-11-28.log``) gave median CRPS 1.299 at
  8 / 1.1, 1.313 at 4 / 1.0, 1.320 at 8 / 1.0 and 3.0-3.3 at half-width 16 (collapsed,
  spread/skill 0.12-0.15); without localisation (and spin-up) one set gave CRPS 4.55;
* the faithful 256² model (``--methods enks-exact``, the true model up to the 64² truncation of
  the state; about 20x the cost): ``--tune --methods enks-exact --sets 1`` (held-out set 0, 635 s
  beside another job; ``benchmarks/results/kolmogorov_enks_256model_tuning_2026-12-06.log``) gave
  CRPS 1.127 / 1.130 / 1.190 at transition noise 0.2 / 0.5 / 1.0 (spread/skill 0.62 / 0.66 /
  0.80); 0.2 is kept. (Its former start, 8 fine transitions from white noise, gave CRPS 1.78 on
  table set 0.)

Measured (shared 2-core CPU, load about 2, alone), ``--sets 8 --scenario sparse --samples 8
--steps 32 --corrections 1`` (17 states, 8 SDA draws; SDA and EnKS keys do not depend on each
other, so rows from separate runs share their observation sets), medians, physical units
(vorticity standard deviation 4.7):

    ===============================  ======  ======  ============  ======  ==========
    'sparse'                          RMSE   spread  spread/skill   CRPS   s per set
    ===============================  ======  ======  ============  ======  ==========
    SDA, shipped prior (2026-12-06)   1.924   1.268      0.69       1.099      72
    SDA, former GPU prior             2.198   1.252      0.61       1.281     219
    EnKS, 64² model (model error)     2.325   1.991      0.90       1.315       9
    EnKS, 256² model (true model)     2.080   1.258      0.63       1.149     209
    ===============================  ======  ======  ============  ======  ==========

(``benchmarks/results/kolmogorov_sparse_sda_cpuprior_8sets_2026-12-06.*``,
``kolmogorov_sparse_sda_enks_8sets_2026-11-28.*`` and
``kolmogorov_sparse_enks_256model_8sets_2026-12-06.*``.) With the shipped prior SDA's CRPS is
lower than the model-error EnKS's on 8 of 8 sets (per-set 0.86-1.27 against 1.02-1.45) and lower
than the former GPU-trained prior's on 8 of 8 (by 13-15%), at a third of its cost. It is also
lower than the true-model EnKS's on 8 of 8 sets (per-set 0.89-1.52; by 1-16%, median 3.6%),
whose 209 s per set ran beside the test suite. Every method but the 64² EnKS is under-dispersed;
SDA's spread/skill is 0.69. With the former prior more corrections did not help: C = 4 (``--sets 2 --methods sda --corrections 4``, 370 s per set;
``benchmarks/results/kolmogorov_sparse_sda_c4_2sets_2026-11-28.log``) raised the CRPS on both
sets (1.347 -> 1.379, 1.315 -> 1.342) and lowered spread/skill (0.60 -> 0.53, 0.58 -> 0.51).

    python examples/kolmogorov.py                        # small: 9 states, 'coarse', 2 draws, 8 steps
    python examples/kolmogorov.py --full   # 17 states, all scenarios (GPU)
    python examples/kolmogorov.py --sets 8 --scenario sparse --steps 32 --corrections 1  # table
    python examples/kolmogorov.py --tune                 # the EnKS half-width and inflation
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import pandas as pd

from numpyro_sda.checkpoint import load_score
from numpyro_sda.comparison import compare, medians_over_sets, set_rows, to_markdown, write_json
from numpyro_sda.demo import KOLMOGOROV_BASELINES, kolmogorov_methods, run_kolmogorov_demo
from numpyro_sda.scenarios import KOLMOGOROV_SCENARIOS, kolmogorov_scenario

#: ``--methods`` names
METHODS = {"sda": "SDA", "enks": "EnKS", "enks-exact": "EnKS (256² model)"}
#: the ``--tune`` grids and held-out sets: the 64² EnKS's half-width (pixels) x multiplicative
#: inflation; the 256² EnKS's transition noise (physical units) at the 64² row's half-width and
#: inflation (each 256² run costs minutes on a CPU)
LOCALIZATIONS = (4.0, 8.0, 16.0)
INFLATIONS = (1.0, 1.1, 1.2)
EXACT_NOISES = (0.2, 0.5, 1.0)
TUNE_SETS = 2


def table(args: argparse.Namespace) -> dict:
    """Medians over observation sets (keys ``fold_in(PRNGKey(seed), i)``) of RMSE, spread,
    spread/skill and CRPS (physical units) and wall time per method; prints them and returns
    ``{scenario: median table}``."""
    score = None
    if "SDA" in args.methods:
        from numpyro_sda import pretrained

        score = load_score(args.prior) if args.prior else pretrained.load("kolmogorov")
    sda = {k: v for k, v in dict(steps=args.steps, corrections=args.corrections).items()
           if v is not None}
    tables: dict[str, list[pd.DataFrame]] = {}
    t_start = time.perf_counter()
    for name in args.scenarios:
        for i in range(args.first_set, args.first_set + args.sets):
            k_scn, k_run = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(args.seed), i))
            scn = kolmogorov_scenario(k_scn, name, length=args.length)
            print(f"[{time.perf_counter() - t_start:.0f} s] set {i}: {scn.description}",
                  flush=True)
            runs = kolmogorov_methods(k_run, scn, score, num_samples=args.samples, sda=sda,
                                      methods=args.methods)
            t = compare(runs, truth=scn.truth, system=scn.system)
            t["wall_time"] = [float(runs[m].wall_time) for m in t.index]
            t = t[["rmse", "spread", "spread_skill", "crps", "wall_time"]]
            tables.setdefault(name, []).append(t)
            print(t.round(4).to_string(), flush=True)
            if args.json:  # per-set rows so far (an interrupted run keeps what finished)
                write_json(args.json + ".sets.json", set_rows(tables, args.first_set))
    medians = medians_over_sets(tables)
    for name, med in medians.items():
        print(f"\n### Kolmogorov '{name}': medians over {med['sets'].iloc[0]} observation sets\n")
        print(to_markdown(med))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return medians


def tune(args: argparse.Namespace) -> pd.DataFrame:
    """Tune an EnKS row by median CRPS over held-out sets (keys ``fold_in(PRNGKey(1000), i)``,
    never the table's); prints the grid and the best. ``--methods enks`` (default): the 64²
    model's half-width x inflation; ``--methods enks-exact``: the 256² model's transition noise."""
    exact = args.methods == ("EnKS (256² model)",)
    if exact:
        method, knobs = "EnKS (256² model)", ("exact_model_error",)
        grid = [dict(exact_model_error=n) for n in args.noises]
    else:
        method, knobs = "EnKS", ("localization", "inflation")
        grid = [dict(localization=loc, inflation=infl) for loc in args.localizations
                for infl in args.inflations]
    rows = []
    t_start = time.perf_counter()
    for name in args.scenarios:
        for i in range(args.sets):
            k_scn, k_run = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(1000), i))
            scn = kolmogorov_scenario(k_scn, name, length=args.length)
            for point in grid:
                try:
                    runs = kolmogorov_methods(k_run, scn, None, methods=(method,),
                                              log=lambda *a: None, baselines=point)
                    row = compare(runs, truth=scn.truth, system=scn.system).loc[method]
                    row = {k: float(row[k]) for k in ("rmse", "spread_skill", "crps")}
                except ValueError:  # the ensemble diverged: ranks last
                    row = dict(rmse=np.inf, spread_skill=np.nan, crps=np.inf)
                rows.append(dict(scenario=name, set=i, **point, **row))
                print(f"[{time.perf_counter() - t_start:.0f} s] {name} held-out set {i} {point}: "
                      f"{row}", flush=True)
    df = pd.DataFrame(rows)
    med = df.groupby(["scenario", *knobs])[["rmse", "spread_skill", "crps"]].median()
    print(med.round(4).to_string())
    for name in args.scenarios:
        best = med.loc[name]["crps"].idxmin()
        best = best if isinstance(best, tuple) else (best,)
        print(f"best {method} for '{name}': "
              + ", ".join(f"{k} {v}" for k, v in zip(knobs, best, strict=True))
              + " (KOLMOGOROV_BASELINES: "
              + ", ".join(f"{k} {KOLMOGOROV_BASELINES[k]}" for k in knobs) + ")")
    return df


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
    parser.add_argument("--sets", type=int, default=None,
                        help="the table: medians over this many observation sets (no figures)")
    parser.add_argument("--first-set", type=int, default=0, help="first set (to split a run)")
    parser.add_argument("--methods", default="sda,enks",
                        help="--sets: comma-separated, of sda, enks (64² model), enks-exact "
                             "(256² model, slow)")
    parser.add_argument("--samples", type=int, default=8, help="--sets: SDA draws per set")
    parser.add_argument("--steps", type=int, default=None, help="--sets: SDA steps")
    parser.add_argument("--corrections", type=int, default=None, help="--sets: SDA corrections")
    parser.add_argument("--length", type=int, default=17, help="--sets/--tune: states")
    parser.add_argument("--tune", action="store_true",
                        help=f"tune the EnKS on {TUNE_SETS} held-out sets per scenario (--methods "
                             "enks: half-width x inflation; enks-exact: the 256² model's noise)")
    parser.add_argument("--json", default=None, help="--sets: write the medians to this file")
    args = parser.parse_args()
    if args.tune or args.sets:
        args.scenarios = args.scenarios or ["sparse"]
        names = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
        if not names or set(names) - set(METHODS):
            parser.error(f"--methods: expected some of {sorted(METHODS)}, got {args.methods!r}")
        args.methods = tuple(METHODS[n] for n in METHODS if n in names)
        if args.tune:
            if args.methods == ("SDA", "EnKS"):  # the default --methods
                args.methods = ("EnKS",)
            if len(args.methods) != 1 or args.methods[0] == "SDA":
                parser.error("--tune: --methods is one of enks, enks-exact")
            args.sets = args.sets or TUNE_SETS
            args.localizations, args.inflations = LOCALIZATIONS, INFLATIONS
            args.noises = EXACT_NOISES
            tune(args)
            return
        medians = table(args)
        if args.json:
            write_json(args.json, {k: v.reset_index().to_dict(orient="records")
                                   for k, v in medians.items()})
        return
    scenarios = args.scenarios or (list(KOLMOGOROV_SCENARIOS) if args.full else ["coarse"])
    settings = (dict(length=17, num_samples=64, ensemble_size=64) if args.full else
                dict(length=9, num_samples=2, ensemble_size=16, steps=8, corrections=1))
    for name in scenarios:
        res = run_kolmogorov_demo(scenario=name, out=f"{args.out}/{name}", seed=args.seed,
                                  prior_path=args.prior, require_prior=False, **settings)
        print(f"{name}: {', '.join(res['files'])}")


if __name__ == "__main__":
    main()
