"""The examples' small defaults run end to end (slow: minutes each on a shared CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "lorenz63.py": ["### Lorenz-63 'lo'", "### Lorenz-63 'hi'", "w1"],
    "lorenz96.py": ["medians over 2 observation sets", "SDA", "EnKS", "4D-Var"],
    "kuramoto_sivashinsky.py": ["medians over 2 observation sets", "SDA", "EnKS", "BPF"],
    "kolmogorov.py": ["coarse:", "vorticity.gif"],
    "numpyro_model.py": ["sigma: posterior median", "inside the gap"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_small_default_runs(script, tmp_path):
    if script == "kuramoto_sivashinsky.py":
        from numpyro_sda import pretrained

        if "ks" not in pretrained.available():
            pytest.skip("no shipped KS prior")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    for text in EXAMPLES[script]:
        assert text in out.stdout, (text, out.stdout[-3000:])
