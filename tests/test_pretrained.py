"""Shipped priors: each loads, has a documented header and reproduces a stored output checksum."""

import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_sda import pretrained

# (sum, sum of |.|, first element, last element) of score.local(w, t) on the fixed probe below,
# recorded when the file was shipped. A changed file, a broken loader or a changed network
# definition moves them.
CHECKSUMS = {
    "lorenz63": (2.457198191434145, 47.21847464516759, 0.07667980343103409, -0.864652156829834),
    "lorenz63_window9": (1.8309260979294777, 104.28719783574343, -0.6697129607200623,
                         -0.9468936920166016),
    "lorenz63_window9_stride2": (3.4720688723027706, 90.43648916855454, -1.9892642498016357,
                                 -0.9466992020606995),
    "lorenz96": (-45.64225017162971, 1050.2409809322562, 2.4723269939422607, -0.6092109680175781),
    "ks": (21.464663243852556, 1294.3981087068096, 2.311267375946045, -0.3235480785369873),
    "kolmogorov": (803.9008686313318, 29293.119800129396, 0.7377525568008423,
                   0.37295886874198914),
}


def probe(score) -> list[float]:
    """Evaluate the local score on a fixed deterministic batch of 3 windows."""
    shape = tuple(s if s is not None else 64 for s in score.state_shape)
    n = score.window * int(np.prod(shape))
    w = np.sin(0.37 * np.arange(3 * n, dtype=np.float64) + 0.5)
    w = w.reshape(3, score.window, *shape).astype(np.float32)
    t = np.array([0.1, 0.5, 0.9], np.float32)
    out = np.asarray(score.local(jnp.asarray(w), jnp.asarray(t)), np.float64)
    return [float(out.sum()), float(np.abs(out).sum()), float(out.ravel()[0]),
            float(out.ravel()[-1])]


@pytest.mark.parametrize("name", sorted(CHECKSUMS))
def test_shipped_prior_reproduces_its_checksum(name):
    assert name in pretrained.available()
    got = probe(pretrained.load(name))
    np.testing.assert_allclose(got, CHECKSUMS[name], rtol=2e-4, atol=2e-5)


def test_every_shipped_prior_has_a_documented_header():
    for name in pretrained.available():
        info = pretrained.info(name)
        combined = bool(pretrained.parts(name))
        for header in ([info["fine"], info["coarse"]] if combined else [info]):
            assert np.isfinite(header["training"]["valid_loss"])
        assert pretrained.load(name).normalization is not None
        if not combined:
            assert pretrained.path(name).stat().st_size <= 10 * 2**20


def test_combined_prior_is_made_of_its_shipped_parts():
    from numpyro_sda.multiresolution import MultiResolutionScore

    name = "lorenz63_multiresolution"
    spec = pretrained.parts(name)
    score = pretrained.load(name)
    assert isinstance(score, MultiResolutionScore)
    assert (score.stride, score.coarse_above) == (spec["stride"], spec["coarse_above"])
    np.testing.assert_allclose(probe(score.fine), CHECKSUMS[spec["fine"]], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(probe(score.coarse), CHECKSUMS[spec["coarse"]], rtol=2e-4,
                               atol=2e-5)
    assert pretrained.info(name)["combination"] == spec
    assert pretrained.parts("lorenz63") == {}
    with pytest.raises(ValueError, match="combines the files"):
        pretrained.path(name)


def test_unknown_prior_is_named():
    with pytest.raises(ValueError, match="unknown pretrained prior 'nope'"):
        pretrained.load("nope")
