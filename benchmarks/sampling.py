"""SDA posterior quality and cost on the paper's Lorenz-63 protocol (issue 9).

Protocol (``benchmarks/protocol.py``): scenarios "lo" (first normalised component every 8 states,
noise 0.05) and "hi" (every state, noise 0.25) over 65 states; for each of ``--sets`` observation
sets, ``--draws`` SDA draws against ``--draws`` draws of a 16384-particle bootstrap smoother (the
ground truth; a second independent smoother gives the noise floor). Reported per configuration
and scenario, as the **median over observation sets**:

* W1 (exact EMD, whole trajectories, physical units) to the ground truth, the floor, their ratio;
* spread/skill against the truth (1 is calibrated) and the spread relative to the ground truth's;
* CRPS against the truth;
* sampling wall time and process CPU time per 1024 draws (compilation excluded / included).

A second part (``--speed``, run instead of the quality table) times one reverse step for
1024 x 65 states at C = 1 on the "lo" observations: ours in the paper's configuration (window-5
prior, SDA guidance gamma 3e-2, eta 0) and with ``SDA()``'s defaults (window-9 prior, its default
guidance and eta) at C = 1; with ``--reference`` also the PyTorch reference
(``reference_torch.py``: the reference's predictor-corrector step with its composed score over
all 61 windows and its Gaussian likelihood score, gamma 3e-2, tau 0.25, the window-5 weights
copied into it), interleaved with ours over ``--repeats`` rounds, and the ratio of the medians.
Without torch it says that the reference was not run.

Usage::

    python benchmarks/sampling.py                       # default + paper configs, 8 sets, 1024 draws
    python benchmarks/sampling.py --quick               # 2 sets, 256 draws, 2 configurations
    python benchmarks/sampling.py --configs paper,default --sets 8 --json out/bench/sampling.json
    python benchmarks/sampling.py --speed --reference [--repeats 3] [--ref-threads default,1]

Historical note, not used in any ratio: on another day the reference (PyTorch SDA, window 5,
256 steps, C = 1) was measured at about 2080 s per 1024 draws on these machines, for W1 about 40
(the paper: 37.5 at C = 1, 11.9 at C = 16, best 5.6 with window 17 and C = 16; floor about 5).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402
import sidebyside  # noqa: E402

from numpyro_sda import pretrained  # noqa: E402
from numpyro_sda.checkpoint import load_score  # noqa: E402
from numpyro_sda.ensemble import ScoreEnsemble  # noqa: E402
from numpyro_sda.guidance import MMPS, SDAGuidance  # noqa: E402
from numpyro_sda.infer import SDA  # noqa: E402
from numpyro_sda.multiresolution import MultiResolutionScore  # noqa: E402
from numpyro_sda.prior import TrajectoryPrior  # noqa: E402
from numpyro_sda.sampling import piecewise_times  # noqa: E402

CONFIGS = {
    # name: (pretrained prior, SDA settings[, TrajectoryPrior options]); "default" is SDA()'s
    # own defaults with the demo's prior (until session 25: "lorenz63_window9", average=0)
    "default": ("lorenz63_multiresolution", dict(), dict(average=1)),
    "paper": ("lorenz63", dict(steps=256, corrections=1, eta=0.0,
                               guidance=SDAGuidance(gamma=3e-2))),
    # the ablation of issue 9 (closing note), one lever at a time
    "w5-sda-c1-64": ("lorenz63", dict(steps=64, corrections=1, eta=0.0,
                                      guidance=SDAGuidance(gamma=3e-2))),
    "w5-mmps-dense-c0-64": ("lorenz63", dict(steps=64, corrections=0, eta=0.0,
                                             guidance=MMPS(solver="dense"))),
    "w9-sda-c4-32": ("lorenz63_window9", dict(steps=32, corrections=4, eta=0.0,
                                              guidance=SDAGuidance(gamma=3e-2))),
    "w9-mmps-c4-32": ("lorenz63_window9", dict(steps=32, corrections=4, eta=0.0,
                                               guidance=MMPS())),
    "w9-mmps-dense-c2-64": ("lorenz63_window9", dict(steps=64, corrections=2, eta=0.0,
                                                     guidance=MMPS(solver="dense"))),
    "w9-sda-c4-32-eta1": ("lorenz63_window9", dict(steps=32, corrections=4, eta=1.0,
                                                   guidance=SDAGuidance(gamma=3e-2))),
    "w9-sda-c8-16-eta1": ("lorenz63_window9", dict(steps=16, corrections=8, eta=1.0,
                                                   guidance=SDAGuidance(gamma=3e-2))),
    "w9-sda-c4-32-eta1-g0.1": ("lorenz63_window9", dict(steps=32, corrections=4, eta=1.0,
                                                        guidance=SDAGuidance(gamma=0.1))),
    "w9-sda-c4-32-eta1-g0.01": ("lorenz63_window9", dict(steps=32, corrections=4, eta=1.0,
                                                         guidance=SDAGuidance(gamma=0.01))),
    "w9-sda-c4-32-eta1-g0.003": ("lorenz63_window9", dict(steps=32, corrections=4, eta=1.0,
                                                          guidance=SDAGuidance(gamma=0.003))),
    "w9-sda-c8-32-eta1": ("lorenz63_window9", dict(steps=32, corrections=8, eta=1.0,
                                                   guidance=SDAGuidance(gamma=3e-2))),
    "w9-sda-c8-32-eta1-g0.01": ("lorenz63_window9", dict(steps=32, corrections=8, eta=1.0,
                                                         guidance=SDAGuidance(gamma=0.01))),
    "w9-sda-c16-32-eta1-g0.01": ("lorenz63_window9", dict(steps=32, corrections=16, eta=1.0,
                                                          guidance=SDAGuidance(gamma=0.01))),
    # around the former default (C=16, 32 steps, eta=1, gamma=0.01), on the 8-set x 1024-draw
    # protocol (benchmarks/results/sampling_gpu_2026-11-27_h200.txt); w9-c32 is today's default
    "w9-c16": ("lorenz63_window9", dict(corrections=16)),
    "w9-c32": ("lorenz63_window9", dict(corrections=32)),
    "w9-c64": ("lorenz63_window9", dict(corrections=64)),
    "w9-c32-16steps": ("lorenz63_window9", dict(steps=16, corrections=32)),
    "w9-c16-64steps": ("lorenz63_window9", dict(steps=64, corrections=16)),
    "w9-c16-g0.003": ("lorenz63_window9", dict(corrections=16,
                                               guidance=SDAGuidance(gamma=0.003))),
    "w9-c16-tau0.1": ("lorenz63_window9", dict(corrections=16, tau=0.1)),
    "w9-mmps-c16": ("lorenz63_window9", dict(corrections=16, guidance=MMPS())),
    # session 16: one lever at a time around w9-c32
    "w9-c64-tau0.1": ("lorenz63_window9", dict(corrections=64, tau=0.1)),
    "w9-c32-tau0.1": ("lorenz63_window9", dict(corrections=32, tau=0.1)),
    "w9-c32-tau0.5": ("lorenz63_window9", dict(corrections=32, tau=0.5)),
    "w9-c32-eta0": ("lorenz63_window9", dict(corrections=32, eta=0.0)),
    "w9-c32-g0.03": ("lorenz63_window9", dict(corrections=32, guidance=SDAGuidance(gamma=0.03))),
    "w9-c32-edm": ("lorenz63_window9", dict(corrections=32, spacing="edm")),
    "w9-mmps-c32": ("lorenz63_window9", dict(corrections=32, guidance=MMPS())),
    "w5-c32": ("lorenz63", dict(corrections=32)),
    "w9-c32-below0.5": ("lorenz63_window9", dict(corrections=32, correct_below=0.5)),
    "w9-c64-below0.5": ("lorenz63_window9", dict(corrections=64, correct_below=0.5)),
    "w9-c64-below0.25": ("lorenz63_window9", dict(corrections=64, correct_below=0.25)),
    "w9-c32-below0.25": ("lorenz63_window9", dict(corrections=32, correct_below=0.25)),
    "w9-c32-below0.125": ("lorenz63_window9", dict(corrections=32, correct_below=0.125)),
    "w9-c128-below0.25": ("lorenz63_window9", dict(corrections=128, correct_below=0.25)),
    "w9-c64-below0.125": ("lorenz63_window9", dict(corrections=64, correct_below=0.125)),
    # strided composition (TrajectoryPrior(stride=...)): a third entry holds prior options
    "w9-s3-c64-below0.25": ("lorenz63_window9", dict(corrections=64, correct_below=0.25),
                            dict(stride=3)),
    "w9-s2-c64-below0.25": ("lorenz63_window9", dict(corrections=64, correct_below=0.25),
                            dict(stride=2)),
    "w9-s3-c128-below0.25": ("lorenz63_window9", dict(corrections=128, correct_below=0.25),
                             dict(stride=3)),
    # averaged composition (TrajectoryPrior(average=...))
    "w9-avg1-c64-below0.25": ("lorenz63_window9", dict(corrections=64, correct_below=0.25),
                              dict(average=1)),
    "w9-avg1-c32-below0.25": ("lorenz63_window9", dict(corrections=32, correct_below=0.25),
                              dict(average=1)),
    "w9-avg2-c64-below0.25": ("lorenz63_window9", dict(corrections=64, correct_below=0.25),
                              dict(average=2)),
    # more predictor steps, fewer corrections each (about the same network evaluations)
    "w9-avg1-s64-c32-below0.25": ("lorenz63_window9",
                                  dict(steps=64, corrections=32, correct_below=0.25),
                                  dict(average=1)),
    "w9-avg1-s128-c16-below0.25": ("lorenz63_window9",
                                   dict(steps=128, corrections=16, correct_below=0.25),
                                   dict(average=1)),
    "w9-avg1-s64-c64-below0.25": ("lorenz63_window9",
                                  dict(steps=64, corrections=64, correct_below=0.25),
                                  dict(average=1)),
    # session 22: where the predictor steps go (piecewise-uniform grids; the 17 corrected steps
    # at t <= 0.25 and their C = 32 unchanged) and fewer corrections (the "hi" CPU budget)
    "w9-avg1-mid72-c32": ("lorenz63_window9",
                          dict(steps=96, corrections=32, correct_below=0.25,
                               spacing=piecewise_times((1, 0.75, 0.25, 0), (8, 72, 16))),
                          dict(average=1)),
    "w9-avg1-mid16-c32": ("lorenz63_window9",
                          dict(steps=36, corrections=32, correct_below=0.25,
                               spacing=piecewise_times((1, 0.75, 0.25, 0), (4, 16, 16))),
                          dict(average=1)),
    "w9-avg1-s64-c16-below0.25": ("lorenz63_window9",
                                  dict(steps=64, corrections=16, correct_below=0.25),
                                  dict(average=1)),
    "w9-avg1-s128-c8-below0.25": ("lorenz63_window9",
                                  dict(steps=128, corrections=8, correct_below=0.25),
                                  dict(average=1)),
    # session 25: the two-resolution prior's CPU budget (run with --coarse); C = 8 is the default
    "w9-avg1-s64-c8-below0.25": ("lorenz63_window9",
                                 dict(steps=64, corrections=8, correct_below=0.25),
                                 dict(average=1)),
}

# the grid of issue 9: window {5, 9} (and the two-resolution prior) x C {0, 1, 2, 4} on every
# step x guidance {sda, mmps}; 64 steps, average=1, SDA()'s other defaults
for _prior, _tag in (("lorenz63", "w5"), ("lorenz63_window9", "w9"),
                     ("lorenz63_multiresolution", "mr")):
    for _guide, _gname in ((SDAGuidance(gamma=0.01), "sda"), (MMPS(), "mmps")):
        for _c in (0, 1, 2, 4):
            CONFIGS[f"grid-{_tag}-{_gname}-c{_c}"] = (
                _prior, dict(steps=64, corrections=_c, correct_below=1.0, guidance=_guide),
                dict(average=1))


def load_prior(name: str):
    """A shipped prior by name (``pretrained.available()``) or a prior file's path; several
    joined by ``+`` make a :class:`~numpyro_sda.ensemble.ScoreEnsemble` (equal weights)."""
    if "+" in name:
        return ScoreEnsemble([load_prior(part) for part in name.split("+")])
    return pretrained.load(name) if name in pretrained.available() else load_score(name)


def run_config(name: str, scenario: str, sets, draws: int, prior_name: str | None = None,
               gt_draws: int | None = None, coarse: tuple[str, int, float] | None = None) -> dict:
    """One configuration on ``sets`` observation sets; one ``SDA`` serves them all (the
    observations are dynamic arguments of its compiled steps, so it compiles once).
    ``prior_name`` replaces the configuration's prior (a shipped name or a file); ``gt_draws``
    scores against a ground truth of that many draws (default ``draws``): with fewer SDA draws
    than ground-truth draws W1 is biased upwards (compare such rows with each other only;
    ``ratio_n`` corrects for it). ``sets``: a number of sets (the first ones) or a list of set
    indices."""
    score_name, settings, *prior_options = CONFIGS[name]
    prior_kwargs = prior_options[0] if prior_options else {}
    score_name = prior_name or score_name
    score = load_prior(score_name)
    if coarse is not None:
        coarse_name, stride, above = coarse
        score = MultiResolutionScore(score, load_prior(coarse_name), stride, above)
    prior = TrajectoryPrior(score, length=protocol.LENGTH, **prior_kwargs)
    rows, sda = [], None
    for i in (range(sets) if isinstance(sets, int) else sets):
        case = protocol.case(scenario, i, num_draws=gt_draws or draws)
        if sda is None:
            sda = SDA(case.model, progress=False, predictive=False, **settings)
        c0 = time.process_time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            sda.run(jax.random.key(1000 + i), prior, y=case.y, num_samples=draws)
        cpu = time.process_time() - c0
        r = protocol.score(case, np.asarray(sda.get_samples()["x"]))
        r.update(set=i, floor=case.floor, wall=sda.wall_time * 1024 / draws,
                 cpu=cpu * 1024 / draws, compile=sda.compile_time,
                 warnings=[str(w.message)[:80] for w in caught])
        rows.append(r)
    keys = ("w1", "floor", "ratio", "floor_n", "ratio_n", "ss", "spread_vs_gt", "crps", "rmse", "wall", "cpu",
            "finite")
    med = {k: float(np.median([r[k] for r in rows])) for k in keys}
    settings_doc = {k: (v.describe() if hasattr(v, "describe") else v)
                    for k, v in settings.items()}
    return dict(config=name, prior=score_name, coarse=coarse, settings=settings_doc, scenario=scenario,
                sets=sets, draws=draws, median=med, rows=rows,
                load=os.getloadavg()[0])


SPEED_CONFIGS = {
    # name: (pretrained prior, SDA settings other than steps); C = 1 in both
    "ours, paper config (window 5, SDAGuidance 3e-2, eta 0)": (
        "lorenz63", dict(corrections=1, eta=0.0, tau=0.25, guidance=SDAGuidance(gamma=3e-2))),
    "ours, SDA() defaults at C=1 (window-9 prior)": ("lorenz63_window9", dict(corrections=1)),
}


def speed(args) -> None:
    """Seconds per reverse step, 1024 draws x 65 states, C = 1; the reference interleaved."""
    from numpyro_sda.systems import Lorenz63

    every, noise = protocol.SCENARIOS["lo"]
    system = Lorenz63()
    k_truth, k_obs = jax.random.split(jax.random.key(13))
    x_true = system.normalize(system.simulate(k_truth, 1, protocol.LENGTH, burn_in=1024)[0])
    clean = x_true[::every, :1]
    y = np.asarray(clean + noise * jax.random.normal(k_obs, clean.shape), np.float32)
    model = protocol.make_model(every, noise)
    draws, steps = args.speed_draws, args.speed_steps
    load_begin = sidebyside.load()
    runs, compile_s = {}, {}
    for name, (prior_name, settings) in SPEED_CONFIGS.items():
        prior = TrajectoryPrior(pretrained.load(prior_name), length=protocol.LENGTH)
        sda = SDA(model, steps=steps, progress=False, predictive=False, **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sda.run(jax.random.key(0), prior, y=y, num_samples=draws)  # compiles
        compile_s[name] = sda.compile_time

        def ours(sda=sda, prior=prior) -> tuple[float, float]:
            with warnings.catch_warnings():  # a 2-step diffusion's draws are not posterior draws
                warnings.simplefilter("ignore", RuntimeWarning)
                sda.run(jax.random.key(1), prior, y=y, num_samples=draws)
            return steps, sda.wall_time

        runs[name] = ours
    ref, ref_note = (None, "reference not run (pass --reference)")
    if args.reference:
        ref, ref_note = sidebyside.load_reference()
    if ref is not None:
        torch = ref.torch
        port = ref.from_local_score(pretrained.load("lorenz63"))
        guide = ref.GaussianGuidance(port, torch.tensor(y), lambda x: x[..., ::every, :1],
                                     noise, gamma=3e-2)
        sampler = ref.Sampler(guide, corrections=1, tau=0.25)
        x0 = torch.randn(draws, protocol.LENGTH, 3)
        for n in sidebyside.thread_counts(args.ref_threads, ref):
            def reference(n=n) -> tuple[float, float]:
                torch.set_num_threads(n)
                _, done, seconds = sampler.run(x0, steps, max_seconds=args.ref_seconds)
                return done, seconds

            runs[f"reference, {n} thread{'s' if n > 1 else ''}"] = reference
            torch.set_num_threads(n)
            sampler.run(x0[:64], 1)  # warm-up
    timings = sidebyside.interleave(runs, args.repeats)
    for t in timings.values():  # steps/s -> seconds per step
        t["s_per_step"] = [1 / r for r in t["rate"]]
        t["median_s"] = statistics.median(t["s_per_step"])
    names = [n for n in timings if n.startswith("reference")]
    best = min(names, key=lambda n: timings[n]["median_s"]) if names else None
    print(f"seconds per reverse step, {draws} draws x {protocol.LENGTH} states, C = 1, scenario "
          f"'lo'; {steps} timed steps per run, {args.repeats} interleaved repeats; "
          f"{os.cpu_count()} CPUs, jax {jax.__version__}, XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}, PJRT_NPROC={os.environ.get('PJRT_NPROC', '')!r}")
    width = max(len(n) for n in timings)
    print(f"| {'run':<{width}} | s/step (median) | all repeats | loads | vs fastest reference |")
    print(f"|{'-' * (width + 2)}|----|----|----|----|")
    for name, t in timings.items():
        vs = ""
        if best is not None and not name.startswith("reference"):
            vs = f"{timings[best]['median_s'] / t['median_s']:.2f}x"
        print(f"| {name:<{width}} | {t['median_s']:.2f} | {sidebyside.fmt(t['s_per_step'], 2)} | "
              f"{sidebyside.fmt(t['load'], 1)} | {vs} |")
    if ref is None:
        print(ref_note)
    else:
        print(f"(reference: {ref_note}; ours and the reference alternate within each repeat; "
              "ours' wall time includes the initial noise and the per-draw diagnostics)")
    print(f"compile s: {', '.join(f'{k}: {v:.1f}' for k, v in compile_s.items())}; load "
          f"average start {load_begin:.1f}, end {sidebyside.load():.1f}")
    result = dict(date=datetime.date.today().isoformat(), cpus=os.cpu_count(),
                  jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""),
                  pjrt_nproc=os.environ.get("PJRT_NPROC", ""), draws=draws,
                  length=protocol.LENGTH, corrections=1, scenario="lo",
                  steps_per_run=steps, repeats=args.repeats, timings=timings,
                  compile_s=compile_s, reference=ref_note, reference_fastest=best,
                  load_start=load_begin, load_end=sidebyside.load())
    if best is not None:
        result["ratios_vs_fastest_reference"] = {
            n: timings[best]["median_s"] / t["median_s"] for n, t in timings.items()
            if not n.startswith("reference")}
    path = Path(args.json or "out/bench/sampling_speed.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 sets, 256 draws")
    parser.add_argument("--sets", type=int, default=None)
    parser.add_argument("--set-ids", default=None,
                        help="comma-separated observation-set indices instead of --sets (e.g. "
                             "a full-size check of chosen sets)")
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--configs", default=None, help=f"comma-separated, from {list(CONFIGS)}")
    parser.add_argument("--scenarios", default="lo,hi")
    parser.add_argument("--gt-draws", type=int, default=None,
                        help="ground-truth draws (default: --draws; e.g. 1024 with a cached "
                             "ground truth and fewer SDA draws)")
    parser.add_argument("--prior", default=None,
                        help="replace every configuration's prior: a shipped name or a file, "
                             "or several joined by + (a ScoreEnsemble)")
    parser.add_argument("--coarse", default=None,
                        help="a coarse local score (trained on every --coarse-stride-th state): "
                             "the prior becomes a MultiResolutionScore")
    parser.add_argument("--coarse-stride", type=int, default=2)
    parser.add_argument("--coarse-above", type=float, default=0.25)
    parser.add_argument("--json", default=None,
                        help="output (default out/bench/sampling.json, or sampling_speed.json)")
    parser.add_argument("--speed", action="store_true",
                        help="time one reverse step (1024 x 65 states, C = 1) instead")
    parser.add_argument("--reference", action="store_true",
                        help="with --speed: also time the PyTorch reference, interleaved")
    parser.add_argument("--repeats", type=int, default=3, help="--speed: interleaved repeats")
    parser.add_argument("--speed-draws", type=int, default=1024)
    parser.add_argument("--speed-steps", type=int, default=2, help="timed steps per run")
    parser.add_argument("--ref-threads", default="default,1",
                        help="torch thread counts to time ('default': torch's choice)")
    parser.add_argument("--ref-seconds", type=float, default=120.0,
                        help="no new reference step after this many seconds of a run")
    sidebyside.add_ours_threads(parser)
    args = parser.parse_args()
    sidebyside.set_ours_threads(args.ours_threads)
    if args.speed:
        speed(args)
        return
    json_path = Path(args.json or "out/bench/sampling.json")
    sets = args.sets or (2 if args.quick else 8)
    draws = args.draws or (256 if args.quick else 1024)
    names = (args.configs.split(",") if args.configs
             else (["default", "w5-sda-c1-64"] if args.quick else ["default", "paper"]))
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; jax "
          f"{jax.__version__} on {jax.devices()[0].platform}; {sets} observation sets, "
          f"{draws} draws vs {args.gt_draws or draws} ground-truth draws (16384 particles)")
    header = (f"{'config':>15} {'scen':>4} {'W1':>6} {'floor':>6} {'ratio':>6} {'ratio_n':>7} "
              f"{'spr/skill':>9} "
              f"{'spr/GT':>7} {'CRPS':>6} {'wall s':>7} {'cpu s':>7} {'finite':>6} {'load':>5}")
    print(header)
    results = []
    for name in names:
        for scenario in args.scenarios.split(","):
            chosen = [int(i) for i in args.set_ids.split(",")] if args.set_ids else sets
            coarse = (args.coarse, args.coarse_stride, args.coarse_above) if args.coarse else None
            res = run_config(name, scenario, chosen, draws, args.prior, args.gt_draws, coarse)
            results.append(res)
            m = res["median"]
            print(f"{name:>15} {scenario:>4} {m['w1']:>6.1f} {m['floor']:>6.1f} "
                  f"{m['ratio']:>6.2f} {m['ratio_n']:>7.2f} {m['ss']:>9.2f} {m['spread_vs_gt']:>7.2f} "
                  f"{m['crps']:>6.3f} {m['wall']:>7.0f} {m['cpu']:>7.0f} {m['finite']:>6.2f} "
                  f"{res['load']:>5.1f}", flush=True)
            write_json(json_path, results)  # after each row: a cut run keeps its rows
    print("(medians over observation sets; ratio_n: W1 over the floor at the same number of "
          "draws, what exact draws of that size score; wall: sampling only, per 1024 draws; cpu: process CPU "
          "time per 1024 draws, compilation included; spr/GT: ensemble spread / ground truth's)")
    print(f"wrote {json_path}")


def write_json(path: Path, results: list) -> None:
    """Write ``results`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
