"""HDF5 trajectory datasets: round trip, determinism, atomicity, errors, window sampling."""

import json
import os

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_sda import data
from numpyro_sda.systems import KuramotoSivashinsky, Lorenz63

N, T, BURN, SEED = 10, 16, 8, 3


@pytest.fixture(scope="module")
def l63():
    return Lorenz63()


@pytest.fixture(scope="module")
def l63_file(l63, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "l63.h5"
    out = data.generate(l63, path, num_trajectories=N, length=T, burn_in=BURN, seed=SEED,
                        chunk_trajectories=3, progress=False)
    assert out == path
    return path


def test_split_counts():
    assert data.split_counts(10, (0.8, 0.1, 0.1)) == {"train": 8, "valid": 1, "test": 1}
    assert data.split_counts(1024, (0.8, 0.1, 0.1)) == {"train": 820, "valid": 102, "test": 102}
    assert data.split_counts(5, (0.6, 0.4)) == {"train": 3, "valid": 2}
    with pytest.raises(ValueError, match="sum"):
        data.split_counts(10, (0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="non-negative"):
        data.split_counts(10, (1.2, -0.1, -0.1))
    with pytest.raises(ValueError, match="num_trajectories"):
        data.split_counts(0, (0.8, 0.1, 0.1))


def test_round_trip_matches_in_memory_simulation(l63, l63_file):
    mem = data.simulate(l63, SEED, N, T, burn_in=BURN)  # same per-trajectory keys
    assert {k: v.shape for k, v in mem.items()} == {
        "train": (8, T, 3), "valid": (1, T, 3), "test": (1, T, 3)}
    for split in data.SPLITS:
        with data.load(l63_file, split) as ds:
            assert ds.shape == mem[split].shape and len(ds) == mem[split].shape[0]
            arr = ds.to_array()
            assert arr.dtype == np.float32
            np.testing.assert_allclose(arr, mem[split], atol=1e-5)
            # physical units are stored; the normalisation stats are the system's
            np.testing.assert_array_equal(ds.mean, l63.mean)
            np.testing.assert_array_equal(ds.std, l63.std)
            phys = data.TrajectoryDataset(l63_file, split, normalized=False).to_array()
            np.testing.assert_allclose(ds.denormalize(arr), phys, atol=1e-4)
    # physical trajectories are Lorenz-63 ones: z around 25, the attractor's scale
    train = data.load(l63_file, "train", normalized=False)
    assert 5 < train.to_array()[..., 2].mean() < 45
    np.testing.assert_array_equal(train.trajectory_index, np.arange(8))
    assert data.load(l63_file, "test").trajectory_index.tolist() == [9]


def test_metadata_attributes(l63, l63_file):
    ds = data.load(l63_file, "valid")
    assert ds.system == "Lorenz63"
    assert ds.system_params["rho"] == 28.0 and ds.system_params["dt"] == 0.025
    assert ds.dt == pytest.approx(0.025) and ds.seed == SEED and ds.burn_in == BURN
    attrs = ds.attrs
    assert attrs["format_version"] == data.FORMAT_VERSION and bool(attrs["complete"])
    assert json.loads(attrs["splits"]) == {"train": 8, "valid": 1, "test": 1}
    assert ds[0].shape == (T, 3) and ds[0:1].shape == (1, T, 3)
    w = ds.read_windows([0, 0], [0, 11], 5)
    np.testing.assert_allclose(w[1], ds.to_array()[0, 11:16])


def test_regeneration_is_deterministic_and_chunk_independent(l63, l63_file, tmp_path):
    ref = data.load(l63_file, "train", normalized=False).to_array()
    same = data.generate(l63, tmp_path / "a.h5", num_trajectories=N, length=T, burn_in=BURN,
                         seed=SEED, chunk_trajectories=3, progress=False)
    np.testing.assert_array_equal(data.load(same, "train", normalized=False).to_array(), ref)
    other_chunks = data.generate(l63, tmp_path / "b.h5", num_trajectories=N, length=T,
                                 burn_in=BURN, seed=SEED, chunk_trajectories=4, progress=False)
    np.testing.assert_allclose(
        data.load(other_chunks, "train", normalized=False).to_array(), ref, rtol=0, atol=1e-5)
    # a different seed gives different trajectories
    new_seed = data.generate(l63, tmp_path / "c.h5", num_trajectories=N, length=T,
                             burn_in=BURN, seed=SEED + 1, chunk_trajectories=3, progress=False)
    assert np.abs(data.load(new_seed, "train", normalized=False).to_array() - ref).mean() > 1.0
    # overwrite is explicit
    with pytest.raises(FileExistsError, match="overwrite"):
        data.generate(l63, same, num_trajectories=N, length=T, seed=SEED, progress=False)
    data.generate(l63, same, num_trajectories=N, length=T, burn_in=BURN, seed=SEED,
                  chunk_trajectories=3, progress=False, overwrite=True)


def test_pde_dataset_channel_first_states(tmp_path):
    ks = KuramotoSivashinsky()
    path = data.generate(ks, tmp_path / "ks.h5", num_trajectories=3, length=4, burn_in=2,
                         seed=0, splits=(2 / 3, 1 / 3), progress=True)
    ds = data.load(path, "train")
    assert ds.shape == (2, 4, 1, 64) and ds.std.shape == (1, 1)
    assert np.isfinite(ds.to_array()).all()
    with pytest.raises(ValueError, match="unknown split 'test'"):
        data.load(path, "test")


# ------------------------------------------------------------------------ errors and atomicity
def test_unreadable_files(l63_file, tmp_path):
    missing = tmp_path / "missing.h5"
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        data.load(missing)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="garbage.h5.*not a readable HDF5"):
        data.load(garbage)
    truncated = tmp_path / "truncated.h5"
    raw = l63_file.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated.h5"):
        data.load(truncated)
    incomplete = tmp_path / "incomplete.h5"
    incomplete.write_bytes(raw)
    with h5py.File(incomplete, "r+") as f:
        del f.attrs["complete"]
    with pytest.raises(ValueError, match="incomplete.h5 is incomplete"):
        data.load(incomplete)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a numpyro-sda trajectory dataset"):
        data.load(foreign)
    with pytest.raises(ValueError, match="unknown split 'training'"):
        data.load(l63_file, "training")


def test_interrupted_generation_leaves_no_file(l63, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = data._check_finite

    def interrupt(x, start):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        original(x, start)

    monkeypatch.setattr(data, "_check_finite", interrupt)
    path = tmp_path / "interrupted.h5"
    with pytest.raises(KeyboardInterrupt):
        data.generate(l63, path, num_trajectories=N, length=T, burn_in=BURN, seed=SEED,
                      chunk_trajectories=3, progress=False)
    assert calls["n"] == 2
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_unstable_simulation_is_reported(tmp_path):
    unstable = Lorenz63(dt=0.5, noise_std=0.0)  # RK4 diverges at this step
    with pytest.raises(FloatingPointError, match="non-finite"):
        data.generate(unstable, tmp_path / "u.h5", num_trajectories=2, length=40, seed=0,
                      progress=False)
    assert os.listdir(tmp_path) == []


def test_generate_bad_arguments(l63, tmp_path):
    p = tmp_path / "x.h5"
    with pytest.raises(ValueError, match="length"):
        data.generate(l63, p, num_trajectories=4, length=-1, progress=False)
    with pytest.raises(ValueError, match="burn_in"):
        data.generate(l63, p, num_trajectories=4, length=4, burn_in=-2, progress=False)
    with pytest.raises(ValueError, match="num_trajectories"):
        data.generate(l63, p, num_trajectories=0, length=4, progress=False)
    with pytest.raises(ValueError, match="splits"):
        data.generate(l63, p, num_trajectories=4, length=4, splits=(0.5, 0.2), progress=False)
    with pytest.raises(TypeError, match="DynamicalSystem"):
        data.generate(object(), p, num_trajectories=4, length=4, progress=False)
    with pytest.raises(FileNotFoundError, match="directory"):
        data.generate(l63, tmp_path / "nodir" / "x.h5", num_trajectories=4, length=4,
                      progress=False)
    assert not p.exists()


# ------------------------------------------------------------------------ windows
def _encoded(n=6, t=20):
    # value = 100 * trajectory + time: every window must be one trajectory, consecutive times
    return (100.0 * np.arange(n)[:, None] + np.arange(t)[None, :])[..., None].astype(np.float32)


def _check_windows(w, window, t):
    traj, time = np.divmod(w[..., 0].astype(int), 100)
    assert np.all(traj == traj[:, :1])
    assert np.all(np.diff(time, axis=1) == 1)
    assert time.min() >= 0 and time.max() <= t - 1
    return traj[:, 0], time[:, 0]


def test_window_sampler_in_memory():
    arr = _encoded()
    sampler = data.WindowSampler(arr, window=5, batch_size=64, seed=0)
    assert sampler.in_memory
    starts, trajs = [], []
    for _, w in zip(range(20), sampler, strict=False):
        assert w.shape == (64, 5, 1) and w.dtype == np.float32
        i, s = _check_windows(w, 5, 20)
        starts.append(s)
        trajs.append(i)
    starts, trajs = np.concatenate(starts), np.concatenate(trajs)
    assert starts.min() == 0 and starts.max() == 15  # every start 0..T-window is reachable
    assert set(trajs.tolist()) == set(range(6))
    # same seed, same batches
    a = data.WindowSampler(arr, 5, 8, seed=1).sample()
    b = data.WindowSampler(arr, 5, 8, seed=1).sample()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="longer than the trajectories"):
        data.WindowSampler(arr, window=21, batch_size=4)
    with pytest.raises(ValueError, match="window"):
        data.WindowSampler(arr, window=0, batch_size=4)


def test_window_sampler_out_of_memory_buffer(l63_file):
    ds = data.load(l63_file, "train")
    full = ds.to_array()
    sampler = data.WindowSampler(ds, window=5, batch_size=16, seed=0, max_memory=1024,
                                 buffer_trajectories=3, refresh=2)
    assert not sampler.in_memory
    seen = set()
    for _ in range(12):
        w = sampler.sample()
        assert w.shape == (16, 5, 3)
        # each window is a slice of a stored trajectory
        for win in w:
            match = [(i, s) for i in range(full.shape[0]) for s in range(T - 4)
                     if np.allclose(full[i, s:s + 5], win)]
            assert match
            seen.add(match[0][0])
    assert len(seen) > 3  # the buffer is refreshed with other trajectories


def test_sample_windows_jittable_in_scan():
    arr = jnp.asarray(_encoded())

    def body(key, _):
        key, sub = jax.random.split(key)
        return key, data.sample_windows(sub, arr, 5, 32)

    _, ws = jax.jit(lambda k: jax.lax.scan(body, k, None, length=4))(jax.random.PRNGKey(0))
    assert ws.shape == (4, 32, 5, 1)
    _, s = _check_windows(np.asarray(ws).reshape(-1, 5, 1), 5, 20)
    assert s.max() <= 15
    with pytest.raises(ValueError, match="longer than the trajectories"):
        data.sample_windows(jax.random.PRNGKey(0), arr, 21, 4)


def test_ctrl_c_during_generation_waits_interruptibly_and_closes_the_bar(l63, tmp_path,
                                                                        monkeypatch):
    """Issue 12 item 14: generation waits for each simulated chunk with the interruptible wait
    (Ctrl-C lands within a fraction of a second, see test_train), and an interrupt closes the
    progress bar (rate and ETA over trajectories) and publishes nothing."""
    from tqdm.auto import tqdm

    calls = {"n": 0}
    original = data.block_interruptibly

    def wait(x):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(x)

    monkeypatch.setattr(data, "block_interruptibly", wait)
    path = tmp_path / "interrupted.h5"
    with pytest.raises(KeyboardInterrupt):
        data.generate(l63, path, num_trajectories=N, length=T, burn_in=BURN, seed=SEED,
                      chunk_trajectories=3, progress=True)
    assert calls["n"] == 2
    assert not path.exists() and os.listdir(tmp_path) == []
    assert not [b for b in getattr(tqdm, "_instances", ()) if "interrupted" in str(b.desc)]
