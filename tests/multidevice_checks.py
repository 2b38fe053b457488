"""Checks that need several devices, run by tests/test_parallel.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (it must be set before JAX starts).

    python tests/multidevice_checks.py CHECK [CHECK ...]   # prints one JSON object

Each check returns measured numbers; the assertions live in tests/test_parallel.py.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from numpyro_sda.parallel import (
    draws_mesh,
    draws_sharding,
    gather_draws,
    num_shards,
    shard_draws,
    sharded_vmap,
)


def _maxdiff(a, b) -> float:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb, strict=True))


def _maxrel(a, b) -> float:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(y))) + 1e-30))
        for x, y in zip(la, lb, strict=True)
    )


def check_devices() -> dict:
    return {"devices": len(jax.devices()), "partitionable": bool(jax.config.jax_threefry_partitionable)}


def check_vmap() -> dict:
    """sharded_vmap over 7 and 1 keys (padding) == jax.vmap on one device."""
    w = jax.random.normal(jax.random.key(3), (16, 16))

    def one(key, w):
        x = jax.random.normal(key, (16,))
        for _ in range(3):
            x = jnp.tanh(w @ x)
        return {"x": x, "s": jnp.sum(x)}

    out = {}
    for n in (7, 1, 8):
        keys = jax.random.split(jax.random.key(n), n)
        ref = jax.jit(jax.vmap(one, in_axes=(0, None)))(keys, w)
        got = sharded_vmap(one, in_axes=(0, None))(keys, w)
        out[f"diff_{n}"] = _maxdiff(got, ref)
        out[f"scale_{n}"] = max(float(jnp.max(jnp.abs(v))) for v in jax.tree_util.tree_leaves(ref))
        out[f"shape_{n}"] = list(got["x"].shape)
    # a user mesh: two devices, another axis name
    mesh = draws_mesh(jax.devices()[:2], axis="batch")
    keys = jax.random.split(jax.random.key(0), 5)
    got = sharded_vmap(one, mesh, axis="batch", in_axes=(0, None))(keys, w)
    out["diff_user_mesh"] = _maxdiff(got, jax.vmap(one, in_axes=(0, None))(keys, w))
    out["shards_user_mesh"] = num_shards(mesh, axis="batch")
    return out


def check_shard() -> dict:
    x = {"a": np.arange(10.0), "b": np.ones((10, 3))}
    sharded, n = shard_draws(x)
    back = gather_draws(sharded, n)
    return {
        "n": n,
        "padded": int(sharded["a"].shape[0]),
        "spec": str(sharded["a"].sharding.spec),
        "per_device": sorted({int(s.data.shape[0]) for s in sharded["a"].addressable_shards}),
        "roundtrip_equal": bool(all(np.array_equal(back[k], x[k]) for k in x)),
        "sharding_is_draws": sharded["a"].sharding == draws_sharding(),
    }


def _tiny_score():
    from numpyro_sda.score import LocalScore

    return LocalScore.mlp(3, window=5, hidden=32, depth=2, rngs=1)


def check_train_step() -> dict:
    """One training step with the batch sharded over 4 devices == one device: loss, gradients
    and the updated parameters (AdamW + clipping)."""
    from numpyro_sda.train import make_loss_and_grad, make_optimizer, make_train_step

    data = jnp.asarray(jax.random.normal(jax.random.key(0), (16, 24, 3)), jnp.float32)
    graphdef, params, rest = nnx.split(_tiny_score(), nnx.Param, ...)
    key = jax.random.key(5)
    single = jax.jit(make_loss_and_grad(graphdef, 32, 5))
    sharded = jax.jit(make_loss_and_grad(graphdef, 32, 5, draws_sharding()))
    l1, g1 = single(params, rest, data, key, 3)
    l4, g4 = sharded(params, rest, data, key, 3)
    tx = make_optimizer(100)
    carry = (params, tx.init(params), None, jnp.asarray(0, jnp.int32))
    c1, _ = jax.jit(make_train_step(graphdef, tx, 32, 5, None))(carry, rest, data, key)
    c4, _ = jax.jit(make_train_step(graphdef, tx, 32, 5, None, draws_sharding()))(
        carry, rest, data, key)
    return {"loss_rel": abs(float(l4) - float(l1)) / abs(float(l1)), "grad_rel": _maxrel(g4, g1),
            "params_maxdiff": _maxdiff(c4[0], c1[0]), "lr": 1e-3}


def check_train() -> dict:
    """A short train_score run with the batch sharded == unsharded; sharded checkpoints resume
    exactly; the default shards automatically over the visible devices."""
    from numpyro_sda.checkpoint import load_checkpoint
    from numpyro_sda.train import train_score

    data = jnp.asarray(jax.random.normal(jax.random.key(0), (16, 24, 3)), jnp.float32)
    out = {}
    kw = dict(steps=30, chunk=10, batch_size=32, seed=2, progress=False, valid_size=64)
    train, valid = data[:12], data[12:]
    one = train_score(_tiny_score(), train, valid, mesh=False, **kw)
    four = train_score(_tiny_score(), train, valid, mesh=draws_mesh(), **kw)
    out["params_30_steps_maxdiff"] = _maxdiff(nnx.state(four.score, nnx.Param),
                                              nnx.state(one.score, nnx.Param))
    out["valid_loss_rel"] = float(np.max(np.abs(four.history["valid_loss"] - one.history["valid_loss"])
                                         / one.history["valid_loss"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.npz"
        part = train_score(_tiny_score(), train, valid, mesh=draws_mesh(), checkpoint=path,
                           callback=lambda s, *_: s >= 10, **kw)
        resumed = train_score(_tiny_score(), train, valid, mesh=draws_mesh(), checkpoint=path,
                              resume=True, **kw)
        out["ckpt_step_after_callback"] = part.step
        out["resumed_step"] = resumed.step
        out["resumed_vs_uninterrupted_maxdiff"] = _maxdiff(
            nnx.state(resumed.score, nnx.Param), nnx.state(four.score, nnx.Param))
        out["ckpt_loads_on_one_device"] = load_checkpoint(path).step
    # default (mesh=None) shards automatically when several devices are visible
    auto = train_score(_tiny_score(), train, valid, **kw)
    out["auto_vs_explicit_maxdiff"] = _maxdiff(nnx.state(auto.score, nnx.Param),
                                               nnx.state(four.score, nnx.Param))
    return out


def check_sampling() -> dict:
    """Guided reverse diffusion of a trained-size MLP prior, sharded over draws == one device."""
    from numpyro_sda.sampling import predictor_corrector

    score = _tiny_score()
    eps = score.eps_fn()
    sde = score.sde
    y = jnp.linspace(-1.0, 1.0, 9)

    def guided(x, t):  # Eq. 13-style guidance on state 0 of every 4th step (a Gaussian)
        def log_lik(x):
            e = eps(x, t)
            xhat = (x - sde.sigma(t) * e) / sde.mu(t)
            var = 0.01 + (sde.sigma(t) / sde.mu(t)) ** 2
            return -0.5 * jnp.sum((xhat[::4, 0] - y) ** 2) / var

        return eps(x, t) - sde.sigma(t) * jax.grad(log_lik)(x)

    def one(key):
        return predictor_corrector(key, guided, (33, 3), sde, 16, 1, 0.25)

    keys = jax.random.split(jax.random.key(11), 10)
    ref = jax.jit(jax.vmap(one))(keys)
    got = sharded_vmap(one)(keys)
    return {"maxdiff": _maxdiff(got, ref), "scale": float(jnp.max(jnp.abs(ref))),
            "shape": list(got.shape)}


def check_sda_run() -> dict:
    """numpyro_sda.SDA.run with the draws sharded over 4 devices (the default mesh) == the same
    run with mesh=False, same key; 10 draws (padded to 12, trimmed back)."""
    import numpyro
    import numpyro.distributions as dist

    from numpyro_sda import pretrained
    from numpyro_sda.infer import SDA
    from numpyro_sda.prior import TrajectoryPrior

    prior = TrajectoryPrior(pretrained.load("lorenz63"), length=17)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::4, :1], 0.1), obs=y)

    y = jnp.linspace(-1.0, 1.0, 5)[:, None]
    runs = [SDA(model, steps=6, corrections=1, progress=False, mesh=m).run(
        jax.random.key(0), prior, y=y, num_samples=10) for m in (False, None)]
    one, four = (np.asarray(r.get_samples()["x"]) for r in runs)
    return {"maxdiff": float(np.max(np.abs(one - four))), "shape": list(four.shape),
            "scale": float(np.max(np.abs(one)))}


def _linear_gaussian_problem():
    """The 16-step, 2-D linear-Gaussian model of tests/test_baselines_linear.py (state 0 of
    every second step observed with noise 0.3) and its observations."""
    import numpyro
    import numpyro.distributions as dist

    from numpyro_sda.markov import MarkovPrior

    L, D, sigma = 16, 2, 0.3
    A = jnp.asarray([[0.9, 0.25], [-0.25, 0.9]], jnp.float32)
    Q = 0.1 * jnp.eye(D)
    prior = MarkovPrior(dist.MultivariateNormal(jnp.asarray([1.0, -0.5]), jnp.eye(D)),
                        lambda x: dist.MultivariateNormal(A @ x, Q), L)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::2, :1], sigma), obs=y)

    x_true = prior.sample(jax.random.key(0))
    y = x_true[::2, :1] + sigma * jax.random.normal(jax.random.key(1), (L // 2, 1))
    return model, prior, y, L, D


def _run_pair(make, prior, y, num_samples):
    """The same method and key on one device (mesh=False) and sharded (the factory's mesh);
    returns both runs and the warnings of the sharded one."""
    import warnings

    one = make(False).run(jax.random.key(3), prior, y=y, num_samples=num_samples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sharded = make(None).run(jax.random.key(3), prior, y=y, num_samples=num_samples)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    return one, sharded, messages


def _sharding_facts(x) -> dict:
    return {"spec": str(x.sharding.spec), "devices": len(x.sharding.device_set),
            "rows_per_device": sorted({int(s.data.shape[0]) for s in x.addressable_shards})}


def _hlo_shapes(compiled, *shapes: str) -> dict:
    text = compiled.as_text()
    return {s: text.count(s) for s in shapes} | {
        op: text.count(op) for op in ("all-gather", "all-reduce")}


def check_particle() -> dict:
    """ParticleSmoother sharded == mesh=False, same key: (a) ancestral tracing, 32 particles
    over the default mesh (4 devices), 12 draws (3 per device); (b) FFBSi, 6 particles over an
    explicit 4-device mesh (split over gcd(6, 4) = 2 devices, with a warning), 9 draws (padded
    to 10 and trimmed)."""
    from numpyro_sda.baselines import ParticleSmoother

    model, prior, y, L, D = _linear_gaussian_problem()
    out = {}
    for name, N, smoother, mesh, M in (("ancestral", 32, "ancestral", None, 12),
                                       ("ffbsi", 6, "ffbsi", draws_mesh(), 9)):
        one, sharded, warned = _run_pair(
            lambda m, N=N, smoother=smoother, mesh=mesh: ParticleSmoother(
                model, N, smoother=smoother, mesh=False if m is False else mesh),
            prior, y, M)
        x1, x4 = one.get_samples()["x"], sharded.get_samples()["x"]
        s1, s4 = one.sample_stats, sharded.sample_stats
        r = {
            "shape": list(x4.shape), "scale": float(jnp.max(jnp.abs(x1))),
            "draws_maxdiff": _maxdiff(x4, x1),
            "ess_rel": _maxrel(s4["ess"], s1["ess"]),
            "log_evidence_diff": abs(float(s4["log_evidence"]) - float(s1["log_evidence"])),
            "filter_mean_maxdiff": _maxdiff(s4["filter_mean"], s1["filter_mean"]),
            "distinct_equal": bool(np.array_equal(s4["distinct_paths"], s1["distinct_paths"])),
            "resampled_equal": bool(np.array_equal(s4["resampled"], s1["resampled"])),
            "resampled_steps": int(np.sum(s1["resampled"])),
            "shards": sharded.sharding.shards, "single_shards": one.sharding.shards,
            "warnings": warned, "sharding": _sharding_facts(x4),
        }
        # the partitioned program: per-device (L, N/D, D) particle history, never the full one
        d = sharded.sharding.shards
        r["per_device_history"], r["full_history"] = (
            f"f32[{L},{N // d},{D}]", f"f32[{L},{N},{D}]")
        r["hlo"] = _hlo_shapes(sharded._compiled, r["per_device_history"], r["full_history"])
        r["single_hlo"] = _hlo_shapes(one._compiled)
        out[name] = r
    return out


def _enks_case(kw: dict, mesh) -> dict:
    from numpyro_sda.baselines import EnKS

    model, prior, y, L, D = _linear_gaussian_problem()
    one, sharded, warned = _run_pair(
        lambda m: EnKS(model, mesh=False if m is False else mesh, **kw), prior, y, None)
    x1, x4 = one.get_samples()["x"], sharded.get_samples()["x"]
    N, d = kw["ensemble_size"], sharded.sharding.shards
    return {
        "shape": list(x4.shape), "scale": float(jnp.max(jnp.abs(x1))),
        "maxdiff": _maxdiff(x4, x1),
        "std_maxdiff": _maxdiff(sharded.sample_stats["std"], one.sample_stats["std"]),
        "shards": d, "single_shards": one.sharding.shards, "warnings": warned,
        "sharding": _sharding_facts(x4),
        "hlo": _hlo_shapes(sharded._compiled, f"f32[{N // d},{D}]"),
        "per_device_members": f"f32[{N // d},{D}]",
    }


def check_enks() -> dict:
    """EnKS sharded == mesh=False, same key: stochastic (perturbed observations drawn inside
    the program), 16 members over a user 2 x 2 mesh ("draws", "model"): split over "draws",
    copies along "model"; N < L x size, so the backward pass over stored transforms."""
    from jax.sharding import Mesh

    mesh2d = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("draws", "model"))
    return _enks_case(dict(ensemble_size=16), mesh2d)


def check_enks_window() -> dict:
    """EnKS square root with random rotations, 32 members over the default mesh (4 devices);
    N >= L x size, so each analysis updates the stored window."""
    return _enks_case(dict(ensemble_size=32, variant="sqrt", rotate=True), None)


CHECKS = {k[len("check_"):]: v for k, v in globals().items() if k.startswith("check_")}

if __name__ == "__main__":
    results = {name: CHECKS[name]() for name in sys.argv[1:]}
    print("RESULTS " + json.dumps(results))
