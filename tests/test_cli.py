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
