"""Networks: shapes, parameter counts of the paper's configurations, circular equivariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from numpyro_sda.nets import ResMLP, TimeEmbedding, UNet, patch_conv
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


@pytest.mark.parametrize("spatial", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
def test_patch_conv_equals_the_lax_convolution_and_its_gradients(spatial, stride, kernel):
    # the UNet's nnx.Conv layers compute through patch_conv: same parameters, same values and
    # derivatives as lax.conv_general_dilated (circular padding, strides, 1-D and 2-D)
    rng = np.random.default_rng(spatial * 10 + stride + kernel)
    x = jnp.asarray(rng.standard_normal((3,) + (12,) * spatial + (5,)), jnp.float32)
    k = (kernel,) * spatial
    ref = nnx.Conv(5, 4, k, strides=stride, padding="CIRCULAR", rngs=nnx.Rngs(1))
    new = nnx.Conv(5, 4, k, strides=stride, padding="CIRCULAR", conv_general_dilated=patch_conv,
                   rngs=nnx.Rngs(1))
    np.testing.assert_allclose(new(x), ref(x), atol=2e-5)

    def loss(conv, x):
        return jnp.sum(jnp.sin(conv(x)))

    g_ref = nnx.grad(loss, argnums=(0, 1))(ref, x)
    g_new = nnx.grad(loss, argnums=(0, 1))(new, x)
    np.testing.assert_allclose(g_new[0].kernel[...], g_ref[0].kernel[...], atol=1e-4)
    np.testing.assert_allclose(g_new[0].bias[...], g_ref[0].bias[...], atol=1e-4)
    np.testing.assert_allclose(g_new[1], g_ref[1], atol=1e-4)


def test_patch_conv_in_bfloat16_accumulates_in_float32():
    from numpyro_sda.nets import set_precision

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 16, 8)), jnp.float32)
    ref = set_precision(nnx.Conv(8, 8, (3,), padding="CIRCULAR", rngs=nnx.Rngs(0)), "bf16")
    new = set_precision(nnx.Conv(8, 8, (3,), padding="CIRCULAR", conv_general_dilated=patch_conv,
                                 rngs=nnx.Rngs(0)), "bf16")
    assert new(x).dtype == jnp.float32
    np.testing.assert_allclose(new(x), ref(x), atol=2e-2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU path of patch_conv")
def test_unet_gradient_in_a_scan_has_no_convolution_on_cpu():
    # why patch_conv exists: XLA:CPU runs the kernel gradient of a convolution inside a loop
    # body 20-50x slower than outside one; the UNet's training step and the guided sampler run
    # inside lax.scan, so on CPU their compiled programs must hold matrix products only
    score = LocalScore.unet(1, window=3, spatial=1, hidden_channels=(8, 16), blocks=(1, 1),
                            size=16, rngs=0)
    graphdef, state = nnx.split(score)
    w = jnp.ones((4, 3, 1, 16))
    t = jnp.full((4,), 0.5)

    def grads(state, w):
        return jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s).local(w, t) ** 2))(state)

    def scanned(state, w):
        return jax.lax.scan(lambda c, _: (grads(state, w), None), grads(state, w), None,
                            length=2)[0]

    text = jax.jit(scanned).lower(state, w).compile().as_text()
    assert " convolution(" not in text
    assert " dot(" in text or "dot_general" in text or "custom-call" in text
