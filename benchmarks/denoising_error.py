"""Held-out denoising error of Lorenz-63 priors, per band of diffusion time.

For windows of the test split of ``examples/train_lorenz63.py``'s data (held out from every
prior's training), perturbed with the same noise for every prior, the table gives the noise
prediction's mean squared error :math:`E\\|\\hat\\varepsilon - \\varepsilon\\|^2` per band of
:math:`t` (the DSM loss, irreducible part included) and the mean squared error of Tweedie's
denoiser :math:`\\hat x = (x_t - \\sigma \\hat\\varepsilon)/\\mu` at :math:`t \\ge 0.9`, in
normalised units, where a noise predictor's error is multiplied by :math:`\\sigma/\\mu` (up to
1e3). A prior is a shipped name, a ``.npz`` file, or several joined by ``+``
(a :class:`~numpyro_sda.ensemble.ScoreEnsemble`).

    python benchmarks/denoising_error.py lorenz63_window9 v.npz lorenz63_window9+v.npz
    python benchmarks/denoising_error.py lorenz63_window9 --json out/bench/denoising.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling import load_prior  # noqa: E402
from train_lorenz63 import make_data  # noqa: E402

BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 0.9), (0.9, 1.0))


def errors(score, windows: jax.Array, key: jax.Array, batch: int = 4096) -> dict:
    """Noise MSE per band of t and the denoiser's MSE in the last band, for one prior."""
    sde, n = score.sde, windows.shape[0]
    shape = (-1,) + (1,) * (windows.ndim - 1)
    out = {}
    for i, (lo, hi) in enumerate(BANDS):
        k_t, k_e = jax.random.split(jax.random.fold_in(key, i))
        t = jax.random.uniform(k_t, (n,), minval=lo, maxval=hi)
        eps = jax.random.normal(k_e, windows.shape)
        mu, sigma = sde.mu(t).reshape(shape), sde.sigma(t).reshape(shape)
        w_t = mu * windows + sigma * eps
        pred = jnp.concatenate([score.local(w_t[j:j + batch], t[j:j + batch])
                                for j in range(0, n, batch)])
        out[f"eps_mse_t{lo}-{hi}"] = float(jnp.mean((pred - eps) ** 2))
        if lo >= 0.9:
            x_hat = (w_t - sigma * pred) / mu
            out["denoiser_mse_t>=0.9"] = float(jnp.mean((x_hat - windows) ** 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("priors", nargs="+", help="shipped names, .npz files, or a+b ensembles")
    parser.add_argument("--windows", type=int, default=16384, help="held-out windows")
    parser.add_argument("--json", default=None, help="write the rows here (atomically)")
    args = parser.parse_args()
    _, _, _, test = make_data(0)
    test = jnp.asarray(test)
    k_traj, k_start, k_noise = jax.random.split(jax.random.key(7), 3)
    rows = []
    for name in args.priors:
        score = load_prior(name)
        window = score.window
        traj = jax.random.randint(k_traj, (args.windows,), 0, test.shape[0])
        start = jax.random.randint(k_start, (args.windows,), 0, test.shape[1] - window + 1)
        windows = jnp.stack([test[traj, start + i] for i in range(window)], 1)
        rows.append(dict(prior=name, window=window, **errors(score, windows, k_noise)))
    cols = [f"eps_mse_t{lo}-{hi}" for lo, hi in BANDS] + ["denoiser_mse_t>=0.9"]
    print(f"load average {os.getloadavg()[0]:.1f}; {args.windows} test-split windows per prior")
    print(f"{'prior':40s} " + " ".join(f"{c.replace('eps_mse_', ''):>12s}" for c in cols))
    for r in rows:
        print(f"{r['prior'][-40:]:40s} " + " ".join(f"{r[c]:12.4g}" for c in cols))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(windows=args.windows, rows=rows), indent=1))
        os.replace(tmp, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
