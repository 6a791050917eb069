import numpy as np
import pytest
import tensorflow as tf

from patchvae_tf import models, networks
from patchvae_tf.config import ModelConfig


def _grads(model, x):
    with tf.GradientTape() as tape:
        out = model(x, training=True, temperature=0.5)
        loss = tf.reduce_mean(model.loss_terms(x, out)["loss"])
    return out, dict(
        zip(
            [v.path for v in model.trainable_variables],
            tape.gradient(loss, model.trainable_variables),
            strict=True,
        )
    )


@pytest.mark.parametrize("variant", [{}, {"categorical": True}, {"hard": True}])
def test_gradients_reach_every_head_and_both_networks(variant):
    cfg = ModelConfig(
        encoder="pyramid", base_channels=8, scale=4, num_parts=4, appearance_dim=3, **variant
    )
    model = models.build_model(cfg, 16)
    x = tf.random.uniform([2, 16, 16, 3], -1, 1, seed=0)
    out, grads = _grads(model, x)
    assert out["reconstruction"].shape == (2, 16, 16, 3)
    missing = [name for name, g in grads.items() if g is None]
    assert not missing, missing
    for prefix in (
        "encoder",
        "decoder",
        "appearance_mean",
        "appearance_logvar",
        "occurrence_logits",
    ):
        norms = [float(tf.norm(g)) for name, g in grads.items() if prefix in name]
        assert norms and max(norms) > 0, prefix


def test_resnet_encoder_channels_and_grid():
    for scale, channels in [(4, 64), (8, 128), (32, 512)]:
        enc = networks.ResNetEncoder(scale)
        f = enc(tf.zeros([1, 64, 64, 3]))
        assert f.shape == (1, 64 // scale, 64 // scale, channels)
        assert len(enc.stages) == 1 + int(np.log2(scale)) - 1


def test_encode_is_deterministic_and_consistent():
    model = models.build_model(
        ModelConfig(encoder="resnet", scale=8, num_parts=5, appearance_dim=2), 32
    )
    x = tf.random.uniform([3, 32, 32, 3], -1, 1, seed=3)
    a, b = model.encode(x), model.encode(x)
    for k in ("occurrence", "appearance", "features"):
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
    assert a["occurrence"].shape == (3, 4, 4, 5)
    assert a["appearance"].shape == (3, 5, 2)
    assert a["features"].shape == (3, 128)
    q = a["occurrence"].numpy()
    assert ((q > 0) & (q < 1)).all()
    # The occurrence bias starts at the prior 1/N.
    assert abs(q.mean() - 0.2) < 0.1


def test_vae_baseline_trains_its_latent():
    model = models.build_model(
        ModelConfig(
            arch="vae", encoder="pyramid", base_channels=8, scale=4, num_parts=4, appearance_dim=2
        ),
        16,
    )
    x = tf.random.uniform([2, 16, 16, 3], -1, 1, seed=4)
    out, grads = _grads(model, x)
    assert out["appearance_mean"].shape == (2, 8)
    assert all(g is not None for g in grads.values())
    terms = model.loss_terms(x, out)
    np.testing.assert_array_equal(terms["rate_occ"].numpy(), 0.0)
    np.testing.assert_allclose(
        terms["loss"].numpy(), (terms["distortion"] + terms["rate_app"]).numpy(), rtol=1e-5
    )
    assert model.sample(3).shape == (3, 16, 16, 3)


def test_get_config_round_trip():
    model = models.build_model(
        ModelConfig(
            encoder="pyramid", base_channels=8, scale=4, num_parts=3, appearance_dim=2, hard=True
        ),
        16,
    )
    config = model.get_config()
    assert config["num_parts"] == 3 and config["hard"] is True and config["scale"] == 4
    clone = models.PatchVAE.from_config(config)
    assert clone.encode(tf.zeros([1, 16, 16, 3]))["occurrence"].shape == (1, 4, 4, 3)
    heads = networks.PatchHeads(3, 2, 0.25)
    assert networks.PatchHeads.from_config(heads.get_config()).num_parts == 3


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: networks.PatchHeads(0, 2, 0.1), "num_parts=0"),
        (lambda: networks.PatchHeads(2, 2, 1.5), "1.5"),
        (lambda: networks.ResNetEncoder(6), "scale=6"),
        (lambda: networks.PyramidDecoder(8, base_channels=-1), "base_channels=-1"),
        (lambda: networks.ResidualBlock(8, strides=3), "strides=3"),
    ],
)
def test_layers_validate_arguments(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()
