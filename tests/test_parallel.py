"""Sharding over draws and data-parallel training (numpyro_sda.parallel, train_score(mesh=)),
and over the particles / ensemble members of the baselines (ParticleSmoother, EnKS: mesh=).

Multi-device checks run in a subprocess with 4 forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX initialises);
the measurements come back as JSON from tests/multidevice_checks.py and are asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro_sda
from numpyro_sda.parallel import (
    DRAWS,
    draws_mesh,
    gather_draws,
    pad_draws,
    padded_size,
    shard_draws,
    sharded_vmap,
)

WORKER = Path(__file__).with_name("multidevice_checks.py")


def run_checks(*names: str, devices: int = 4) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    root = str(Path(numpyro_sda.__file__).resolve().parents[1])  # the package under test
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(WORKER), *names], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")][-1]
    return json.loads(line[len("RESULTS "):])


@pytest.fixture(scope="module")
def quick():
    return run_checks("devices", "vmap", "shard", "train_step", "sda_run", "particle", "enks")


def test_four_forced_devices_and_partitionable_keys(quick):
    assert quick["devices"] == {"devices": 4, "partitionable": True}


def test_sharded_vmap_equals_single_device(quick):
    r = quick["vmap"]
    for n in (7, 1, 8):  # 7 and 1 need padding to a multiple of 4; results trimmed back
        assert r[f"shape_{n}"] == [n, 16]
        # float32 tolerance relative to the values (the sum of 16 terms reaches |s| ~ 10, where
        # one float32 ulp is ~1e-6; XLA versions may fuse the partitioned sum in another order:
        # measured 1.7e-6 with jax 0.12, 0 with jax 0.10)
        assert r[f"diff_{n}"] <= 1e-6 * max(1.0, r[f"scale_{n}"]), r
    assert r["shards_user_mesh"] == 2 and r["diff_user_mesh"] <= 1e-6


def test_shard_draws_pads_places_and_trims(quick):
    r = quick["shard"]
    assert r["n"] == 10 and r["padded"] == 12 and r["per_device"] == [3]
    assert r["spec"] == "P('draws',)" and r["sharding_is_draws"] and r["roundtrip_equal"]


def test_one_sharded_training_step_equals_single_device(quick):
    """Batch split over 4 devices, parameters replicated: the per-device partial sums of the
    loss and gradients are all-reduced, so they differ from one device only by float32
    summation order (measured 9e-8 and 2e-7 relative). The updated parameters then differ by
    far less than one learning-rate-sized AdamW step (1e-3)."""
    r = quick["train_step"]
    assert r["loss_rel"] < 1e-5 and r["grad_rel"] < 1e-5, r
    assert r["params_maxdiff"] < 1e-2 * r["lr"], r


def test_sda_run_sharded_over_four_devices_equals_one_device(quick):
    r = quick["sda_run"]
    assert r["shape"] == [10, 17, 3]
    assert r["maxdiff"] <= 1e-4 * max(1.0, r["scale"]), r


# Baselines. Tolerances: a discrete difference (another resampling ancestor, another FFBSi
# pick, members mixed across devices, another random stream) moves a draw by about the posterior
# spread (>= 0.1 here), so it cannot hide under the 1e-5 relative tolerance of float32 rounding.


@pytest.mark.parametrize("case", ["ancestral", "ffbsi"])
def test_sharded_particle_smoother_equals_single_device(quick, case):
    """The particle weights, ESS, resampling decisions and ancestors are replicated (module
    docstring of baselines/particle.py), so the draws, ESS and log-evidence are computed by the
    same float operations as on one device (measured: bitwise equal with jax 0.10 and 0.12); the
    weighted filtering mean is a sum over particles added per device and then across devices
    (float32 reassociation: measured 1.2e-7)."""
    r = quick["particle"][case]
    tol = 1e-5 * max(1.0, r["scale"])
    assert r["draws_maxdiff"] <= tol and r["filter_mean_maxdiff"] <= tol, r
    assert r["ess_rel"] <= 1e-5 and r["log_evidence_diff"] <= 1e-5, r
    assert r["distinct_equal"] and r["resampled_equal"] and r["resampled_steps"] > 0, r


def test_particle_smoother_is_really_sharded(quick):
    a, f = quick["particle"]["ancestral"], quick["particle"]["ffbsi"]
    # 32 particles over the default 4-device mesh; 12 draws, 3 per device
    assert a["shards"] == 4 and a["single_shards"] == 1 and a["warnings"] == []
    assert a["shape"] == [12, 16, 2]
    assert a["sharding"] == {"spec": "P('draws',)", "devices": 4, "rows_per_device": [3]}
    # inside the program: the stored history is (L, N/4, D) per device, never all of it
    assert a["hlo"][a["per_device_history"]] > 0 and a["hlo"][a["full_history"]] == 0, a
    assert a["hlo"]["all-gather"] > 0 and a["single_hlo"]["all-gather"] == 0
    # 6 particles on 4 devices: split over gcd(6, 4) = 2, with a warning; 9 draws padded to 10
    assert f["shards"] == 2 and f["shape"] == [9, 16, 2]
    assert any("split over 2 devices" in w for w in f["warnings"]), f["warnings"]
    assert f["hlo"][f["per_device_history"]] > 0 and f["hlo"][f["full_history"]] == 0, f


def _check_enks(r: dict) -> None:
    """Ensemble means and the M x M / N x N products are sums over members added per device
    and then across devices: float32 reassociation, at most ~N eps relative per sum, not
    amplified by this contracting linear model (measured 2.3e-7 to 4.3e-7 relative with jax
    0.10 and 0.12). The tolerance is 25 times that and four orders of magnitude below the
    posterior spread (~0.2)."""
    tol = 1e-5 * max(1.0, r["scale"])
    assert r["maxdiff"] <= tol and r["std_maxdiff"] <= tol, r
    assert r["single_shards"] == 1 and r["warnings"] == []
    # inside the program: (N/D, size) member blocks per device, combined by all-reduces
    assert r["hlo"][r["per_device_members"]] > 0 and r["hlo"]["all-reduce"] > 0, r


def test_sharded_enks_equals_single_device(quick):
    r = quick["enks"]
    _check_enks(r)
    # a user 2 x 2 mesh ("draws", "model"): members split over "draws", copies along "model"
    assert r["shards"] == 2 and r["shape"] == [16, 16, 2]
    assert r["sharding"] == {"spec": "P('draws',)", "devices": 4, "rows_per_device": [8]}


@pytest.mark.slow
def test_sharded_enks_window_update_equals_single_device():
    r = run_checks("enks_window")["enks_window"]
    _check_enks(r)
    assert r["shards"] == 4 and r["shape"] == [32, 16, 2]
    assert r["sharding"] == {"spec": "P('draws',)", "devices": 4, "rows_per_device": [8]}


@pytest.mark.slow
def test_sharded_training_run_and_resume():
    r = run_checks("train")["train"]
    assert r["params_30_steps_maxdiff"] < 1e-5 and r["valid_loss_rel"] < 1e-5, r
    assert r["ckpt_step_after_callback"] == 10 and r["resumed_step"] == 30
    assert r["resumed_vs_uninterrupted_maxdiff"] == 0.0  # same sharding: bit-identical resume
    assert r["ckpt_loads_on_one_device"] == 30
    assert r["auto_vs_explicit_maxdiff"] == 0.0


@pytest.mark.slow
def test_sharded_guided_sampling_equals_single_device():
    r = run_checks("sampling")["sampling"]
    assert r["shape"] == [10, 33, 3]
    assert r["maxdiff"] <= 1e-4 * max(1.0, r["scale"]), r


# ------------------------------------------------------------------ in-process (one device)


def test_single_device_helpers_and_errors():
    mesh = draws_mesh()
    assert mesh.axis_names == (DRAWS,) and padded_size(5, mesh) == 5 * len(jax.devices())
    keys = jax.random.split(jax.random.key(0), 3)
    got = sharded_vmap(lambda k: jax.random.normal(k, (2,)))(keys)
    np.testing.assert_array_equal(got, jax.vmap(lambda k: jax.random.normal(k, (2,)))(keys))
    padded = pad_draws({"k": keys, "x": np.arange(3)}, 5)
    np.testing.assert_array_equal(padded["x"], [0, 1, 2, 2, 2])
    sharded, n = shard_draws(np.arange(3.0))
    np.testing.assert_array_equal(gather_draws(sharded, n), np.arange(3.0))
    with pytest.raises(ValueError, match="same leading"):
        shard_draws({"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="none named"):
        sharded_vmap(jnp.sin, mesh, axis="particles")
    with pytest.raises(TypeError, match="Mesh"):
        shard_draws(np.zeros(2), mesh="cpu")
    with pytest.raises(ValueError, match=">= 1"):
        padded_size(0)


def test_baselines_refuse_a_bad_mesh():
    from jax.sharding import Mesh

    from numpyro_sda import SDA
    from numpyro_sda.baselines import EnKF, EnKS, ParticleSmoother

    devices = np.asarray(jax.devices()[:1])
    for cls in (ParticleSmoother, EnKS, EnKF, SDA):
        with pytest.raises(ValueError, match="none named 'draws'.*draws_mesh"):
            cls(lambda prior: None, mesh=Mesh(devices, ("batch",)))
        with pytest.raises(ValueError, match=r"axes \('x', 'y'\), none named 'draws'"):
            cls(lambda prior: None, mesh=Mesh(devices.reshape(1, 1), ("x", "y")))
        for bad in ("cpu", True, jax.devices()):
            with pytest.raises(TypeError, match="None .*False .*jax.sharding.Mesh"):
                cls(lambda prior: None, mesh=bad)


def test_ensemble_sharding_on_one_device():
    """mesh=None on one device, mesh=False and a one-device mesh all give the unsharded
    program (no constraints; identities); settings show a mesh by its axes."""
    from numpyro_sda.baselines import ParticleSmoother
    from numpyro_sda.parallel import EnsembleSharding

    for setting in (None, False, draws_mesh(jax.devices()[:1])):
        sh = EnsembleSharding.for_ensemble(setting, 6)
        assert sh.mesh is None and sh.shards == 1 and sh.padded(5) == 5
        x = jnp.arange(6.0)
        assert sh.split(x) is x and sh.whole(x) is x and sh.place(x) is x
        np.testing.assert_array_equal(sh.map(jnp.sin, x, 4), jnp.sin(x))
    with pytest.raises(ValueError, match="number of particles must be >= 1"):
        EnsembleSharding.for_ensemble(None, 0, what="particles")
    pf = ParticleSmoother(lambda prior: None, 8, mesh=draws_mesh(jax.devices()[:1]))
    assert pf.settings_dict()["mesh"] == "Mesh({'draws': 1})"
