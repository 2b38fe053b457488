"""Networks: shapes, parameter counts of the paper's configurations, circular equivariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from numpyro_sda.nets import ResMLP, TimeEmbedding, UNet
from numpyro_sda.score import LocalScore


def _num_params(module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(nnx.state(module, nnx.Param)))


def test_time_embedding_fourier_features():
    emb = TimeEmbedding(8, frequencies=4, hidden=16, rngs=0)
    f = emb.fourier(jnp.array([0.0, 0.5]))
    assert f.shape == (2, 8)
    np.testing.assert_allclose(f[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(f[1, :4], np.cos(np.pi * np.arange(1, 5) * 0.5), atol=1e-6)
    assert emb(jnp.zeros((3, 5))).shape == (3, 5, 8)


def test_resmlp_paper_lorenz63_size():
    # window 5 x 3 features + 32 embedding -> 256 (x5 residual blocks) -> 15 (+ residual block)
    mlp = ResMLP(15 + 32, 15, hidden=(256,) * 5, rngs=0)
    expected = (47 * 256 + 256) + 5 * 2 * (256 * 256 + 256) + (256 * 15 + 15) + 2 * (15 * 15 + 15)
    assert _num_params(mlp) == expected
    score = LocalScore.mlp(3, window=5, hidden=256, depth=5)
    time_mlp = (32 * 256 + 256) + (256 * 32 + 32)
    assert score.num_params() == expected + time_mlp
    assert mlp(jnp.ones((4, 47))).shape == (4, 15)
    with pytest.raises(ValueError, match="expects 47 input features"):
        mlp(jnp.ones((4, 46)))


def test_resmlp_bad_activation():
    with pytest.raises(ValueError, match="unknown activation"):
        ResMLP(3, 3, hidden=(8,), activation="swishy")


@pytest.mark.parametrize("spatial", [1, 2])
def test_unet_shapes_and_circular_equivariance(spatial):
    net = UNet(3, 2, 8, hidden_channels=(8, 16), blocks=(1, 1), spatial=spatial, rngs=0)
    size = (16,) * spatial
    x = jax.random.normal(jax.random.key(0), (2, *size, 3))
    e = jax.random.normal(jax.random.key(1), (2, 8))
    apply = jax.jit(lambda x, e: net(x, e))
    y = apply(x, e)
    assert y.shape == (2, *size, 2)
    # circular padding + stride 2: equivariant to periodic shifts by multiples of 2
    shift = 4
    axes = tuple(range(1, 1 + spatial))
    y_shift = apply(jnp.roll(x, shift, axis=axes), e)
    np.testing.assert_allclose(y_shift, jnp.roll(y, shift, axis=axes), atol=2e-5)
    # the modulation (time embedding) matters
    assert not np.allclose(apply(x, e + 1.0), y, atol=1e-4)


def test_unet_errors():
    with pytest.raises(ValueError, match="spatial=1 or 2"):
        UNet(1, 1, 4, hidden_channels=(4,), blocks=(1,), spatial=3)
    with pytest.raises(ValueError, match="equal length"):
        UNet(1, 1, 4, hidden_channels=(4, 8), blocks=(1,))
    net = UNet(1, 1, 4, hidden_channels=(4, 8, 8), blocks=(1, 1, 1), spatial=1, rngs=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(jnp.ones((1, 10, 1)), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="input channels"):
        net(jnp.ones((1, 8, 2)), jnp.ones((1, 4)))


def test_unet_paper_kolmogorov_configuration():
    # window 5 x 2 velocity channels + 1 forcing channel, (96, 192, 384) x (3, 3, 3), 64^2;
    # built and run abstractly (shapes only) to keep the test fast
    forcing = jnp.sin(4 * jnp.linspace(0, 2 * jnp.pi, 64, endpoint=False))[None, :, None]
    forcing = jnp.broadcast_to(forcing, (1, 64, 64))

    def build():
        return LocalScore.unet(2, window=5, spatial=2, hidden_channels=(96, 192, 384),
                               blocks=(3, 3, 3), context=forcing)

    score = nnx.eval_shape(build)
    assert score.state_shape == (2, 64, 64)
    assert score.network.in_channels == 11 and score.network.out_channels == 10
    assert score.num_params() > 10_000_000
    out = jax.eval_shape(lambda: build()(jnp.zeros((8, 2, 64, 64)), 0.5))
    assert out.shape == (8, 2, 64, 64)
