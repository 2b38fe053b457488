"""Lorenz-96 (32 variables, F = 16): SDA with the shipped prior vs the localised EnKS vs 4D-Var.

Truth: 65 states of ``Lorenz96()`` after 1024 burn-in transitions; every 2nd variable of every
4th state is observed with Gaussian noise 0.1 (normalised units), one NumPyro model. SDA runs it
with ``TrajectoryPrior(pretrained.load("lorenz96"), 65)`` (a 1-D UNet local score on windows of
9 states seen as periodic one-channel fields ``(1, 32)``, ``examples/train_lorenz96.py``; the
model reshapes the trajectory to ``(65, 32)`` before observing it, so the same model serves the
baselines' flat states); the baselines with the exact Markov prior
(``system.markov_prior(65)``, the system's own transition noise): the localised square-root EnKS
(64 members, Gaspari–Cohn half-width 4 variables, multiplicative inflation 1.02) and weak 4D-Var
started from the EnKS mean.

The EnKS settings: ``--tune`` (half-width {2, 4, 8} x inflation {1.02, 1.05, 1.1, 1.2}, 2 held-out
sets, keys ``fold_in(PRNGKey(1000), i)``; 213 s; ``benchmarks/results/lorenz96_enks_tuning_2026-12-06.txt``)
gave median CRPS 0.600 at 8 / 1.05 (spread/skill 0.40), 0.629 at 4 / 1.02 (0.57), 0.731 at
2 / 1.02 (0.82); every inflation above 1.05 raised the CRPS. 4 / 1.02 is kept: half-width 8 is
fragile (with 1.02 it collapsed, CRPS 1.42; with 1.05 the ensemble diverged to non-finite states
on table set 5 of ``--full --no-sda --model-error``, after CRPS 0.74 / 0.69 / 0.55 / 0.54 / 0.73 on
sets 0-4; ``benchmarks/results/lorenz96_enks_halfwidth8_diverged_2026-12-06.log``).

``--model-error`` repeats the baselines with an imperfect model: the forcing F = 15 instead of
16 (the true system's normalisation is kept); SDA's prior was learned from the true system's data
and is unchanged. Metrics (physical units): RMSE of the draws (of the estimate for 4D-Var), spread,
spread/skill, CRPS; the tables are medians over the observation sets (keys
``fold_in(PRNGKey(seed), i)``).

Measured (2026-11-28, shared 2-core CPU, load 2-3.5: other jobs ran beside it part of the time),
``--full --samples 32 --model-error`` (8 sets, 32 SDA draws, SDA's defaults then: 64 steps, C = 32
on the steps ending at t <= 0.25; today's default is C = 8, not measured here; 2479 s; ``benchmarks/results/lorenz96_prior2_table_8sets_2026-11-28.*``),
with the shipped prior retrained on 2026-11-28 (validation loss 0.090), medians, physical units
(the attractor's standard deviation is 6.3):

    ======  ======  ======  ============  ======  ==================================
    true     RMSE   spread  spread/skill   CRPS   model error (F = 15): RMSE / CRPS
    ======  ======  ======  ============  ======  ==================================
    SDA      1.127   2.025      1.78       0.420  (prior unchanged) 1.127 / 0.420
    EnKS     1.624   0.973      0.60       0.696  1.621 / 0.681
    4D-Var   0.434     –         –         0.315  0.521 / 0.372
    ======  ======  ======  ============  ======  ==================================

SDA beats the EnKS in RMSE and CRPS (on 7 of 8 sets) and loses to weak 4D-Var, which
is given the exact dynamics (and, with F = 15, still a close model). The first shipped prior
(14,000 steps, validation loss 0.103; ``benchmarks/results/lorenz96_table_8sets_2026-11-27.*``)
gave SDA RMSE 1.338, spread/skill 1.52, CRPS 0.546: the retrained prior lowers the CRPS on 8 of 8
sets (median 0.42 vs 0.55) but leaves SDA over-dispersed, more so (1.78): its spread is about the
same, its error smaller. SDA takes 194-367 s per set for 32 draws at its defaults here, the
baselines under a second.

    python examples/lorenz96.py                        # small: 2 sets, 32 draws, 64 steps, C = 1
    python examples/lorenz96.py --full --model-error   # 8 sets, 64 draws, SDA's defaults
    python examples/lorenz96.py --prior my_l96.npz     # another prior
    python examples/lorenz96.py --tune                 # the EnKS's half-width and inflation
    python examples/lorenz96.py --full --no-sda        # the baselines' table alone
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd

from numpyro_sda import SDA, TrajectoryPrior, pretrained, systems
from numpyro_sda.baselines import EnKS, FourDVar
from numpyro_sda.checkpoint import load_score
from numpyro_sda.comparison import compare, medians_over_sets, to_markdown, write_json
from numpyro_sda.guidance import SDAGuidance

LENGTH = 65
#: the forcing of the imperfect model of ``--model-error`` (the truth has F = 16)
MODEL_ERROR_F = 15.0
COLUMNS = ("sets", "rmse", "spread", "spread_skill", "crps", "wall_time")
#: the EnKS's Gaspari–Cohn half-width (variables) and multiplicative inflation
ENKS = dict(localization=4.0, inflation=1.02)
#: the ``--tune`` grid and its held-out sets (keys ``fold_in(PRNGKey(1000), i)``)
LOCALIZATIONS = (2.0, 4.0, 8.0)
INFLATIONS = (1.02, 1.05, 1.1, 1.2)
TUNE_SETS = 2


def model(prior, y=None):
    """Every 2nd variable of every 4th state, Gaussian noise 0.1 (normalised units)."""
    x = numpyro.sample("x", prior)
    x = x.reshape(x.shape[0], -1)  # (65, 32) from the UNet prior's (65, 1, 32) as well
    numpyro.sample("y", dist.Normal(x[::4, ::2], 0.1).to_event(2), obs=y)


def imperfect_system(system: systems.Lorenz96, forcing: float) -> systems.Lorenz96:
    """``system`` with another forcing, in the true system's normalised coordinates."""
    wrong = systems.Lorenz96(system.n, F=forcing, dt=system.dt, substeps=system.substeps,
                             noise_std=system.noise_std)
    wrong.mean, wrong.std = system.mean, system.std
    return wrong


def observation_set(system: systems.Lorenz96, key):
    """A normalised truth of ``LENGTH`` states and its observation."""
    k_truth, k_obs = jax.random.split(key)
    truth = system.normalize(system.simulate(k_truth, 1, LENGTH, burn_in=1024)[0])
    y = truth[::4, ::2] + 0.1 * jax.random.normal(k_obs, truth[::4, ::2].shape)
    return truth, y


def enks(key, markov, y, localization: float, inflation: float):
    """The localised square-root EnKS (64 members) with the Markov prior ``markov``, after run."""
    return EnKS(model, 64, variant="sqrt", localization=localization, inflation=inflation,
                rotate=True).run(key, markov, y=y)


def baselines(key, system: systems.Lorenz96, y) -> dict:
    """The localised EnKS (:data:`ENKS`) and weak 4D-Var (from the EnKS mean) with ``system``'s
    Markov prior."""
    k_enks, k_var = jax.random.split(key)
    markov = system.markov_prior(LENGTH)
    out = {"EnKS": enks(k_enks, markov, y, **ENKS)}
    init = np.asarray(out["EnKS"].get_samples()["x"]).mean(0)
    out["4D-Var"] = FourDVar(model, weak=True, init=init, max_iter=1000).run(k_var, markov, y=y)
    return out


def table(results: dict, truth, system: systems.Lorenz96) -> pd.DataFrame:
    """RMSE, spread, spread/skill, CRPS (physical units) and wall time of each method's draws,
    flattened to ``(M, 65, 32)`` (the UNet prior's states are ``(1, 32)``)."""
    draws = {name: np.asarray(r.get_samples()["x"]).reshape(-1, LENGTH, system.n)
             for name, r in results.items()}
    out = compare(draws, truth=truth, system=system)
    out["wall_time"] = [float(results[m].wall_time) for m in out.index]
    return out


def run(args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """Run the sets; returns ``{label: median table}`` and prints the tables."""
    system = systems.Lorenz96()
    score = load_score(args.prior) if args.prior else pretrained.load("lorenz96")
    guidance = (SDAGuidance(gamma=args.gamma) if args.gamma is not None else args.guidance)
    sda = SDA(model, progress=False, **{k: v for k, v in (("steps", args.steps),
                                                         ("corrections", args.corrections),
                                                         ("guidance", guidance))
                                         if v is not None})
    prior = TrajectoryPrior(score, length=LENGTH)
    tables: dict[str, list[pd.DataFrame]] = {}
    t_start = time.perf_counter()
    for i in range(args.first_set, args.first_set + args.sets):
        key = jax.random.fold_in(jax.random.PRNGKey(args.seed), i)
        k_set, k_sda, k_base = jax.random.split(key, 3)
        truth, y = observation_set(system, k_set)
        results = ({} if args.no_sda else
                   {"SDA": sda.run(k_sda, prior, y=y, num_samples=args.samples)})
        results.update(baselines(k_base, system, y))
        tables.setdefault("true model", []).append(table(results, truth, system))
        if args.model_error:
            wrong = baselines(k_base, imperfect_system(system, MODEL_ERROR_F), y)
            sda_row = {} if args.no_sda else {"SDA": results["SDA"]}
            tables.setdefault(f"model error (F = {MODEL_ERROR_F:g})", []).append(
                table({**sda_row, **wrong}, truth, system))
        print(f"[{time.perf_counter() - t_start:.0f} s] set {i}\n"
              f"{tables['true model'][-1][list(COLUMNS[1:])].round(4).to_string()}", flush=True)
    medians = medians_over_sets(tables)
    for label, med in medians.items():
        print(f"\n### Lorenz-96, {label}: medians over {med['sets'].iloc[0]} observation sets\n")
        print(to_markdown(med[[c for c in COLUMNS if c in med.columns]]))
    st = sda.settings
    print("\nSDA: " + ("not run" if args.no_sda else
                       f"{st['steps']} steps, C = {st['corrections']}, guidance "
                       f"{st['guidance']!r}, {args.samples} draws")
          + f"; EnKS {ENKS}; total {time.perf_counter() - t_start:.0f} s")
    return medians


def tune(args: argparse.Namespace) -> pd.DataFrame:
    """The EnKS half-width and inflation by median CRPS over held-out sets (keys
    ``fold_in(PRNGKey(1000), i)``, never the table's), with the true model; prints the grid."""
    system = systems.Lorenz96()
    rows = []
    t_start = time.perf_counter()
    for i in range(args.sets):
        k_set, _, k_base = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(1000), i), 3)
        truth, y = observation_set(system, k_set)
        markov = system.markov_prior(LENGTH)
        for loc in LOCALIZATIONS:
            for infl in INFLATIONS:
                try:
                    row = table({"EnKS": enks(jax.random.split(k_base)[0], markov, y, loc, infl)},
                                truth, system).loc["EnKS"]
                    row = {k: float(row[k]) for k in ("rmse", "spread_skill", "crps")}
                except ValueError:  # the ensemble diverged: ranks last
                    row = dict(rmse=np.inf, spread_skill=np.nan, crps=np.inf)
                rows.append(dict(set=i, localization=loc, inflation=infl, **row))
        print(f"[{time.perf_counter() - t_start:.0f} s] held-out set {i} done", flush=True)
    df = pd.DataFrame(rows)
    med = df.groupby(["localization", "inflation"])[["rmse", "spread_skill", "crps"]].median()
    print(med.round(4).to_string())
    best = med["crps"].idxmin()
    print(f"best: half-width {best[0]}, inflation {best[1]} (ENKS: {ENKS})")
    return df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="8 sets, 64 draws, SDA's default steps and corrections")
    parser.add_argument("--sets", type=int, default=None, help="observation sets")
    parser.add_argument("--samples", type=int, default=None, help="SDA draws")
    parser.add_argument("--steps", type=int, default=None,
                        help="SDA steps (default: SDA's with --full, 64 otherwise)")
    parser.add_argument("--corrections", type=int, default=None,
                        help="SDA corrections per step (default: SDA's with --full, 1 otherwise)")
    parser.add_argument("--guidance", choices=("sda", "mmps", "dps"), default=None,
                        help="SDA's guidance, with its own defaults (default: SDA's default)")
    parser.add_argument("--gamma", type=float, default=None,
                        help="SDAGuidance(gamma) (SDA's default guidance has 0.01)")
    parser.add_argument("--first-set", type=int, default=0,
                        help="index of the first observation set (to split a run)")
    parser.add_argument("--model-error", action="store_true",
                        help=f"also run the baselines with the forcing F = {MODEL_ERROR_F:g}")
    parser.add_argument("--prior", default=None, help="a prior file instead of the shipped one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the observation sets")
    parser.add_argument("--json", default=None, help="write the median tables to this file")
    parser.add_argument("--no-sda", action="store_true",
                        help="the baselines only (their keys do not depend on SDA's)")
    parser.add_argument("--tune", action="store_true",
                        help=f"tune the EnKS's half-width and inflation on {TUNE_SETS} held-out "
                             "sets (or --sets)")
    args = parser.parse_args()
    if args.tune:
        args.sets = args.sets or TUNE_SETS
        tune(args)
        return
    args.sets = args.sets or (8 if args.full else 2)
    args.samples = args.samples or (64 if args.full else 32)
    if not args.full:
        args.steps = 64 if args.steps is None else args.steps
        args.corrections = 1 if args.corrections is None else args.corrections
    medians = run(args)
    if args.json:
        write_json(args.json, {k: v.reset_index().to_dict(orient="records")
                               for k, v in medians.items()})


if __name__ == "__main__":
    main()
