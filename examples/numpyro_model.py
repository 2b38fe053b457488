"""A plain NumPyro model through SDA: a non-Gaussian observation, an unknown noise scale and a gap.

Lorenz-63 with the shipped window-5 prior, 65 states. The model, written as ordinary NumPyro:

* ``y``: the first component at every 4th state, Gaussian with an UNKNOWN noise scale
  ``sigma ~ HalfNormal(0.5)`` (true value 0.1), with a gap: states 24–40 are missing
  (``obs_mask``);
* ``z``: the third component at every 8th state through a heavy-tailed Student-t (3 degrees of
  freedom, scale 0.1) — one of the observations is an outlier (+2).

``sigma`` is inferred by ``SDA(model, gibbs_sweeps=K)`` (SDA for the trajectory, slice sampling
for ``sigma``). The script prints the posterior of ``sigma``, the RMSE of the posterior mean
inside and outside the gap, and writes a figure.

    python examples/numpyro_model.py           # small: 32 draws, 3 sweeps, 64 steps
    python examples/numpyro_model.py --full    # 256 draws, 8 sweeps, SDA's default steps
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from numpyro_sda import SDA, TrajectoryPrior, pretrained, systems

LENGTH = 65


def model(prior, y=None, z=None, mask=None):
    """The plain NumPyro model (normalised units)."""
    x = numpyro.sample("x", prior)
    sigma = numpyro.sample("sigma", dist.HalfNormal(0.5))
    numpyro.sample("y", dist.Normal(x[::4, 0], sigma), obs=y, obs_mask=mask)
    numpyro.sample("z", dist.StudentT(3.0, x[::8, 2], 0.1), obs=z)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="paper-size run")
    parser.add_argument("--out", default="out/numpyro_model", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of truth, data and draws")
    args = parser.parse_args()
    samples, sweeps = (256, 8) if args.full else (32, 3)
    kw = {} if args.full else {"steps": 64}

    system = systems.Lorenz63()
    k_truth, k_y, k_z, k_run = jax.random.split(jax.random.PRNGKey(args.seed), 4)
    truth = system.normalize(system.simulate(k_truth, 1, LENGTH, burn_in=1024)[0])
    t_y = np.arange(0, LENGTH, 4)
    y = truth[::4, 0] + 0.1 * jax.random.normal(k_y, t_y.shape)
    mask = jnp.asarray((t_y < 24) | (t_y > 40))
    y = jnp.where(mask, y, 0.0)  # masked values are ignored; any finite filler works
    z = truth[::8, 2] + 0.1 * jax.random.t(k_z, 3.0, truth[::8, 2].shape)
    z = z.at[3].add(2.0)  # an outlier the Student-t likelihood discounts

    prior = TrajectoryPrior(pretrained.load("lorenz63"), length=LENGTH)
    sda = SDA(model, gibbs_sweeps=sweeps, progress=False, **kw).run(
        k_run, prior, y=y, z=z, mask=mask, num_samples=samples)
    s = sda.get_samples()
    sig = np.asarray(s["sigma"])
    xs = np.asarray(s["x"])
    gap = (np.arange(LENGTH) >= 24) & (np.arange(LENGTH) <= 40)
    err = (xs.mean(0) - np.asarray(truth)) ** 2
    print(f"sigma: posterior median {np.median(sig):.3f}, 90% interval "
          f"[{np.quantile(sig, 0.05):.3f}, {np.quantile(sig, 0.95):.3f}] (true 0.1)")
    print(f"RMSE of the posterior mean (normalised): outside the gap "
          f"{np.sqrt(err[~gap].mean()):.3f}, inside the gap {np.sqrt(err[gap].mean()):.3f}")
    print(f"posterior std inside / outside the gap: {xs.std(0)[gap].mean():.3f} / "
          f"{xs.std(0)[~gap].mean():.3f}")

    import matplotlib

    matplotlib.use("Agg")
    from numpyro_sda.plots import plot_trajectories

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_trajectories(xs, truth=truth, state_names=["x", "y", "z"],
                            title="SDA posterior: unknown noise, Student-t, gap at states 24-40")
    fig.savefig(out / "posterior.png", dpi=100)
    print(f"wrote {out / 'posterior.png'}")


if __name__ == "__main__":
    main()
