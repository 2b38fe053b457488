"""The numpyro-sda command: version, help, and the main job end to end at a tiny size."""

import subprocess
import sys

import numpy as np
import pytest

from numpyro_sda import __version__
from numpyro_sda.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "numpyro_sda.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


def test_demo_end_to_end_small(tmp_path):
    from numpyro_sda.demo import run_demo

    res = run_demo(out=tmp_path, num_samples=32, steps=32, corrections=1, num_particles=1024,
                   seed=1, verbose=False)
    table = res["table"]
    assert list(table.index) == ["SDA", "BPF", "EnKS", "4D-Var"]
    for name in ("comparison.md", "sda_trajectories.png", "bpf_trajectories.png", "sda.nc"):
        assert (tmp_path / name).stat().st_size > 0
    # every method explains the observations far better than chance: the posterior mean fits
    # the observed component within a few noise levels (physical units: 0.05 * 8)
    y = np.asarray(res["y"])[:, 0]
    for name, result in res["results"].items():
        xs = np.asarray(result.get_samples()["x"])
        fitted = xs.mean(0)[::8, 0]
        assert np.sqrt(np.mean((fitted - y) ** 2)) < 0.5, name
    # the particle smoother (the ground truth) is the closest to the independent reference
    assert table.loc["BPF", "w1"] < table.loc["SDA", "w1"]


def test_demo_rejects_unknown_scenario(tmp_path):
    from numpyro_sda.demo import run_demo

    with pytest.raises(ValueError, match="unknown scenario 'mid'"):
        run_demo(scenario="mid", out=tmp_path, verbose=False)


# ---------------------------------------------------------------------------- issue 12 / 11
def _all_actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for a in _all_actions(sub):
                    yield f"{name} {a[0]}", a[1]
        else:
            yield "/".join(action.option_strings) or action.dest, action


def test_every_option_has_help_text():
    from numpyro_sda.cli import build_parser

    missing = [name for name, a in _all_actions(build_parser())
               if not (a.help and a.help.strip())]
    assert missing == []


def test_cli_errors_are_one_line_unless_debug(tmp_path, capsys):
    ckpt = tmp_path / "model.npz"
    assert main(["train", str(tmp_path / "missing.h5"), str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert err.startswith("numpyro-sda: error:") and "missing.h5" in err
    assert "Traceback" not in err
    from numpyro_sda.cli import CLIError

    with pytest.raises(CLIError, match="missing.h5"):
        main(["--debug", "train", str(tmp_path / "missing.h5"), str(ckpt)])


def test_train_refuses_to_overwrite_a_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "trained.npz"
    ckpt.write_bytes(b"a trained model")
    ds = tmp_path / "data.h5"
    ds.write_bytes(b"")
    assert main(["train", str(ds), str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "exists" in err and "--resume" in err
    assert ckpt.read_bytes() == b"a trained model"


def test_generate_ks_then_train_builds_a_unet_and_resumes(tmp_path, capsys):
    from numpyro_sda.checkpoint import load_checkpoint

    ds, ckpt = tmp_path / "ks.h5", tmp_path / "ks.npz"
    assert main(["generate", "kuramoto_sivashinsky", str(ds), "--trajectories", "10",
                 "--length", "12", "--burn-in", "4"]) == 0
    # issue 12 item 11: the default architecture follows the dataset's state shape (1, 64)
    assert main(["train", str(ds), str(ckpt), "--steps", "20", "--channels", "8", "16",
                 "--blocks", "1", "1", "--batch-size", "4", "--no-progress"]) == 0
    ck = load_checkpoint(ckpt)
    assert ck.score.kind == "unet" and ck.score.config["hidden_channels"] == [8, 16]
    assert ck.step == 20
    out = capsys.readouterr().out
    assert "unet local score on states (1, 64)" in out and "validation loss" in out
    # --arch mlp on fields is refused with a clear message
    assert main(["train", str(ds), str(tmp_path / "m.npz"), "--arch", "mlp"]) == 1
    assert "--arch unet" in capsys.readouterr().err
    # resuming the finished run with the same settings keeps its step
    assert main(["train", str(ds), str(ckpt), "--steps", "20", "--channels", "8", "16",
                 "--blocks", "1", "1", "--batch-size", "4", "--no-progress", "--resume"]) == 0
    assert load_checkpoint(ckpt).step == 20
    # --bf16 (issue 11): the network computes in bfloat16 and says so in its saved config
    bf = tmp_path / "bf16.npz"
    assert main(["train", str(ds), str(bf), "--steps", "4", "--channels", "8", "16",
                 "--blocks", "1", "1", "--batch-size", "4", "--no-progress", "--bf16"]) == 0
    ck = load_checkpoint(bf)
    assert ck.score.config["precision"] == "bf16" and ck.step == 4
    out = ck.score.local(np.zeros((2, 5, 1, 64), np.float32), np.array([0.3, 0.7], np.float32))
    assert out.dtype == np.float32 and np.isfinite(np.asarray(out)).all()
    # --time-sampling is recorded with the training settings
    mixed = tmp_path / "mixed.npz"
    assert main(["train", str(ds), str(mixed), "--steps", "4", "--channels", "8", "16",
                 "--blocks", "1", "1", "--batch-size", "4", "--no-progress",
                 "--time-sampling", "mixed"]) == 0
    assert load_checkpoint(mixed).training["time_sampling"] == "mixed"
    # --prediction v: a velocity-predicting UNet, recorded in its config
    vel = tmp_path / "v.npz"
    assert main(["train", str(ds), str(vel), "--steps", "4", "--channels", "8", "16",
                 "--blocks", "1", "1", "--batch-size", "4", "--no-progress",
                 "--prediction", "v"]) == 0
    ck = load_checkpoint(vel)
    assert ck.score.prediction == "v" and ck.score.config["prediction"] == "v"


def test_demo_reports_the_particle_count_it_used(tmp_path, capsys):
    assert main(["demo", "--quick", "--particles", "512", "--samples", "8", "--steps", "8",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "512 particles" in out and "512-particle" in out
    assert "16384" not in out
    assert (tmp_path / "comparison.md").stat().st_size > 0


@pytest.mark.slow
def test_demo_ks_quick(tmp_path, capsys):
    from numpyro_sda import pretrained

    if "ks" not in pretrained.available():
        pytest.skip("no shipped KS prior")
    assert main(["demo", "--system", "ks", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "256 particles" in out
    table = (tmp_path / "comparison.md").read_text()
    for name in ("SDA", "EnKS", "4D-Var", "BPF"):
        assert name in table
    assert (tmp_path / "ks_posteriors.png").stat().st_size > 0


@pytest.mark.slow
def test_demo_kolmogorov_quick_with_a_given_prior(tmp_path, capsys):
    from numpyro_sda.checkpoint import save_score
    from numpyro_sda.score import LocalScore

    # an untrained tiny prior: this checks the pipeline (scenario, SDA, EnKS, figures, GIF),
    # not the quality of the draws
    score = LocalScore.unet(1, window=3, spatial=2, hidden_channels=(4, 8), blocks=(1, 1),
                            size=64, rngs=0)
    path = tmp_path / "tiny.npz"
    save_score(path, score)
    assert main(["demo", "--system", "kolmogorov", "--quick", "--prior", str(path),
                 "--out", str(tmp_path / "out")]) == 0
    for name in ("comparison.md", "sda_fields.png", "enks_fields.png", "vorticity.gif",
                 "sda.nc"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # without a prior file, the shipped Kolmogorov prior (issue 11)
    assert main(["demo", "--system", "kolmogorov", "--quick", "--out",
                 str(tmp_path / "o2")]) == 0
    out = capsys.readouterr().out
    assert "SDA (8 steps, C=1, 2 draws)" in out
    assert (tmp_path / "o2" / "sda_fields.png").stat().st_size > 0


def test_assimilate_hdf5_netcdf_and_toml(tmp_path, capsys):
    import h5py
    import jax
    import xarray as xr

    from numpyro_sda.demo import lorenz63_scenario

    _, truth, y, every, noise = lorenz63_scenario(jax.random.PRNGKey(3), "lo")
    y = np.asarray(y)
    with h5py.File(tmp_path / "obs.h5", "w") as f:
        f["y"] = y
    xr.Dataset({"obs": (("time", "component"), y)}).to_netcdf(tmp_path / "obs.nc")
    (tmp_path / "cfg.toml").write_text(
        f'length = 65\nevery = {every}\nselect = ":1"\nnoise = {noise}\nsamples = 8\n')
    (tmp_path / "cfg.json").write_text(
        f'{{"variable": "obs", "length": 65, "every": {every}, "select": ":1", '
        f'"noise": {noise}, "samples": 8}}')
    for obs, cfg in (("obs.h5", "cfg.toml"), ("obs.nc", "cfg.json")):
        out = tmp_path / f"out-{obs}"
        assert main(["assimilate", "pretrained:lorenz63", str(tmp_path / obs),
                     str(tmp_path / cfg), "--steps", "64", "--out", str(out)]) == 0, \
            capsys.readouterr().err
        idata = xr.open_dataset(out / "sda.nc", group="posterior")
        xs = idata["x"].values.reshape(8, 65, 3)
        fitted = xs.mean(0)[::every, 0]
        assert np.sqrt(np.mean((fitted - y[:, 0]) ** 2)) < 0.5
        assert (out / "posterior.png").stat().st_size > 0
        post = np.load(out / "posterior.npz")
        assert post["mean"].shape == (65, 3)
    # an operator whose output does not match the observations' shape is named
    (tmp_path / "bad.json").write_text('{"length": 65, "every": 4, "select": ":1"}')
    assert main(["assimilate", "pretrained:lorenz63", str(tmp_path / "obs.h5"),
                 str(tmp_path / "bad.json"), "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "shape (9, 1)" in err and "(17, 1)" in err
    (tmp_path / "unk.json").write_text('{"length": 65, "operater": "tanh"}')
    assert main(["assimilate", "pretrained:lorenz63", str(tmp_path / "obs.h5"),
                 str(tmp_path / "unk.json")]) == 1
    assert "operater" in capsys.readouterr().err
