import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchvae_tf.config import ModelConfig
from patchvae_tf.model import models, networks
from patchvae_tf.model.receptive_field import receptive_field


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


def _tiny_pyramid(**overrides) -> ModelConfig:
    """A pyramid model small enough to build and run in a test: 16 px, grid 4 x 4."""
    fields = dict(
        encoder="pyramid", image_size=16, base_channels=8, scale=4, num_parts=4, appearance_dim=2
    )
    return ModelConfig(**{**fields, **overrides})


@pytest.mark.parametrize(
    "variant", [{}, {"categorical": True}, {"hard": True}, {"categorical": True, "hard": True}]
)
def test_gradients_reach_every_head_and_both_networks(variant):
    cfg = _tiny_pyramid(appearance_dim=3, **variant)
    model = models.build_model(cfg)
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
    # Seeded: an unlucky kaiming draw can saturate a sigmoid to exactly 0 or 1 in float32.
    keras.utils.set_random_seed(0)
    model = models.build_model(
        ModelConfig(encoder="resnet", image_size=32, scale=8, num_parts=5, appearance_dim=2)
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
    # The authors' initialization: occurrence logits start with a zero bias.
    np.testing.assert_array_equal(model.heads.logits.bias.numpy(), 0.0)


def test_glorot_initialization_starts_occurrences_at_the_prior():
    model = models.build_model(
        ModelConfig(
            encoder="resnet",
            image_size=32,
            scale=8,
            num_parts=5,
            appearance_dim=2,
            initialization="glorot",
        )
    )
    q = model.encode(tf.random.uniform([3, 32, 32, 3], -1, 1, seed=3))["occurrence"].numpy()
    np.testing.assert_allclose(model.heads.logits.bias.numpy(), np.log(0.2 / 0.8), rtol=1e-6)
    assert abs(q.mean() - 0.2) < 0.1
    np.testing.assert_array_equal(model.heads.logvar.kernel.numpy(), 0.0)


def test_reference_initialization_and_batch_norm_constants():
    """Kaiming fan-out normal for convolutions, PyTorch's default for transposed ones."""
    model = models.build_model(
        ModelConfig(encoder="resnet", image_size=32, scale=8, num_parts=16, appearance_dim=6)
    )
    stem_conv = model.encoder.stages[0].layers[1]  # after the explicit padding
    kernel = stem_conv.kernel.numpy()  # 7 x 7 x 3 x 64
    assert abs(kernel.std() - np.sqrt(2.0 / (7 * 7 * 64))) < 0.1 * np.sqrt(2.0 / (7 * 7 * 64))
    logits_kernel = model.heads.logits.kernel.numpy()  # 3 x 3 x 128 x 16
    expected = np.sqrt(2.0 / (3 * 3 * 16))
    assert abs(logits_kernel.std() - expected) < 0.1 * expected
    deconv = model.decoder.net.layers[3]  # 4 x 4 x 128 (out) x 256 (in)
    # PyTorch's fan_in of a transposed kernel [in, out, k, k] is out * k * k.
    bound = 1.0 / np.sqrt(4 * 4 * 128)
    assert np.abs(deconv.kernel.numpy()).max() <= bound + 1e-7
    assert np.abs(deconv.kernel.numpy()).max() > 0.95 * bound
    bns = [layer for layer in model._flatten_layers() if "batch_norm" in layer.name]
    assert bns and all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)


def test_imagenet_normalization_is_applied_inside_the_model():
    from patchvae_tf.model import normalization

    cfg = _tiny_pyramid(normalization="imagenet")
    model = models.build_model(cfg)
    x = tf.random.uniform([2, 16, 16, 3], -1, 1, seed=5)
    by_hand = ((x.numpy() + 1) / 2 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(normalization.normalize(x, "imagenet"), by_hand, atol=1e-5)
    np.testing.assert_allclose(
        normalization.to_unit(normalization.normalize(x, "imagenet"), "imagenet"), x, atol=1e-5
    )
    f, _ = model.features(x)
    np.testing.assert_allclose(f, model.encoder(by_hand.astype(np.float32)), atol=1e-4)
    out = model(x, training=False, temperature=0.5)
    # The loss compares the decoder's output with the normalised image; figures see pixels.
    np.testing.assert_allclose(
        model.loss_terms(x, out)["distortion"],
        np.sum((out["decoded"].numpy() - by_hand) ** 2, axis=(1, 2, 3)),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        out["reconstruction"], normalization.to_unit(out["decoded"], "imagenet"), atol=1e-6
    )


def test_vae_baseline_trains_its_latent():
    model = models.build_model(_tiny_pyramid(arch="vae"))
    x = tf.random.uniform([2, 16, 16, 3], -1, 1, seed=4)
    out, grads = _grads(model, x)
    assert out["appearance_mean"].shape == (2, 8)
    # The authors' baseline: 1x1 reduction to base_channels, a 4 x 4 (the grid) conv to the
    # code, and a 4 x 4 transposed conv back to the grid.
    assert model.reduce.layers[0].kernel.shape == (1, 1, 16, 8)
    assert model.posterior_mean.kernel.shape == (4, 4, 8, 8)
    assert model.expand.layers[0].kernel.shape == (4, 4, 8, 8)
    assert all(g is not None for g in grads.values())
    terms = model.loss_terms(x, out)
    np.testing.assert_array_equal(terms["rate_occ"].numpy(), 0.0)
    np.testing.assert_allclose(
        terms["loss"].numpy(), (terms["distortion"] + terms["rate_app"]).numpy(), rtol=1e-5
    )
    assert model.sample(3).shape == (3, 16, 16, 3)


def test_get_config_round_trip():
    model = models.build_model(_tiny_pyramid(num_parts=3, hard=True))
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


def test_receptive_field_matches_the_gradient_support(trained):
    cfg, _ = trained
    model = models.build_model(cfg.model)
    x = tf.random.normal([1, 32, 32, 3])
    with tf.GradientTape() as tape:
        tape.watch(x)
        logit = model.heads(model.encoder(x))[2][0, 4, 4, 0]  # an interior cell
    support = np.nonzero(np.abs(tape.gradient(logit, x).numpy()[0]).sum(axis=(1, 2)))[0]
    assert support.max() - support.min() + 1 == receptive_field(model.encoder) == 18


def test_resnet_receptive_field():
    # Stem 7x7/2 and 3x3/2 pool (11 px), stage 1 four 3x3 convs (+32), stage 2 (+64),
    # the 3x3 head at stride 8 (+16).
    assert receptive_field(networks.ResNetEncoder(8)) == 115


def test_every_layer_and_model_round_trips_through_keras_serialization():
    import keras
    import tensorflow as tf

    from patchvae_tf.model import fused, keras_encoder, models, networks

    cfg = ModelConfig(encoder="pyramid", image_size=16, scale=4, base_channels=8, num_parts=3)
    model = models.build_model(cfg)
    objects = [
        networks.ResidualBlock(8, 2, projection=True),
        networks.ResNetEncoder(8),
        networks.PyramidEncoder(4, 8),
        networks.PyramidDecoder(4, 8),
        networks.PatchHeads(3, 2, 0.25, initialization="glorot"),
        fused.FusedBatchNorm(momentum=0.95),
        model,
        models.build_model(dataclasses.replace(cfg, arch="vae")),
        keras_encoder.Encoder.from_autoencoder(model),
    ]
    for obj in objects:
        serialized = keras.saving.serialize_keras_object(obj)
        assert serialized["registered_name"] == f"patchvae_tf>{type(obj).__name__}"
        again = keras.saving.deserialize_keras_object(serialized)
        assert type(again) is type(obj) and again.get_config() == obj.get_config()
    # The Encoder shares the trained model's weights and gives its encode() on pixels.
    pixels = tf.random.uniform([2, 16, 16, 3], 0, 255, seed=1)
    ours = objects[-1](pixels)
    theirs = model.encode(pixels / 127.5 - 1.0)
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-6)
