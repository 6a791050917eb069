"""Any Keras model as the encoder: from Python and as --encoder=module:function, with its
preprocessing inside the model, through training, load(), encoder.keras and the VAE.
"""

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, tiny_config

from patchvae_tf.config import ModelConfig
from patchvae_tf.errors import UserError

PIXELS = np.random.default_rng(3).integers(0, 256, size=(24, 40, 36, 3), dtype=np.uint8)


def resnet_stem():
    """keras.applications' ResNet50V2, untrained, cut after its first block (1/4, 256 maps)."""
    base = keras.applications.ResNet50V2(weights=None, include_top=False)
    return keras.Model(base.input, base.get_layer("conv2_block1_out").output)


def stride_three():
    """A network whose map is not a power-of-two fraction of the image."""
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Conv2D(4, 3, strides=3)(inputs))


PREPROCESS = "keras.src.applications.resnet_v2:preprocess_input"


def _small(**model):
    cfg = tiny_config("unused")
    return dataclasses.replace(cfg.model, **model)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"encoder": "resnet50"}, "unknown --encoder 'resnet50'; expected one of resnet, pyramid"),
        ({"encoder": "a:b:c"}, "unknown --encoder 'a:b:c'"),
        (
            {"encoder": "pyramid", "encoder_preprocessing": PREPROCESS},
            "--encoder_preprocessing is for a module:function --encoder, not --encoder=pyramid",
        ),
        (
            {"encoder": "test_backbone:resnet_stem", "encoder_preprocessing": "x"},
            "--encoder_preprocessing='x' is not of the form module:function",
        ),
    ],
)
def test_encoder_names_are_checked_with_the_other_fields(fields, message):
    with pytest.raises(UserError) as e:
        ModelConfig(**fields)
    assert str(e.value) == message or str(e.value).startswith(message)


def test_a_named_encoder_is_imported_when_the_model_is_built():
    from patchvae_tf.model import backbone, models

    cfg = _small(encoder="no_such_module_x:make")  # the form is right: the config is built
    with pytest.raises(UserError, match="cannot import 'no_such_module_x'"):
        models.build_model(cfg)
    with pytest.raises(UserError, match="'test_backbone' has no 'nothing'"):
        models.build_model(dataclasses.replace(cfg, encoder="test_backbone:nothing"))
    with pytest.raises(UserError, match="maps 32-pixel images to a 10 x 10 feature map"):
        backbone.matched(dataclasses.replace(cfg, encoder="test_backbone:stride_three"))


def test_the_vae_and_patchvae_take_a_named_backbone_and_its_preprocessing():
    from patchvae_tf.model import backbone, models
    from patchvae_tf.training import precision

    cfg = backbone.matched(_small(encoder="test_backbone:resnet_stem", scale=8))
    assert cfg.scale == 4  # matched to the network's map, 8 x 8 for 32-pixel images
    unit = tf.constant(PIXELS[:2, :32, :32].astype(np.float32) / 127.5 - 1.0)
    for arch in ("patchvae", "vae"):
        model = models.build_model(dataclasses.replace(cfg, arch=arch))
        out = model.encode(unit)
        assert out["features"].shape == (2, 256)
        # No preprocessing: the network sees the input space, as the built-in encoders do.
        want = model.encoder.network(unit).numpy().mean(axis=(1, 2))
        np.testing.assert_allclose(out["features"].numpy(), want, rtol=1e-5, atol=1e-5)
    with_pre = dataclasses.replace(cfg, encoder_preprocessing=PREPROCESS)
    model = models.build_model(with_pre)
    x = (unit.numpy() + 1.0) * 127.5
    want = model.encoder.network(keras.applications.resnet_v2.preprocess_input(x.copy()))
    np.testing.assert_allclose(
        model.encode(unit)["features"].numpy(), want.numpy().mean(axis=(1, 2)), atol=1e-5
    )
    # Under a mixed policy the named network is built in it; the outputs stay float32.
    mixed = precision.build_model_in_policy(with_pre, "mixed_bfloat16")
    assert mixed.encoder.network.layers[1].compute_dtype == "bfloat16"
    assert mixed.encode(unit)["features"].dtype == tf.float32


def test_a_keras_model_object_is_refused_under_several_replicas(monkeypatch):
    from patchvae_tf.model import backbone

    _, _, built = backbone.register(stride_three())
    assert built.network is not None
    name, _, _ = backbone.register(resnet_stem())
    assert name.startswith("keras.Model:")

    class Two:
        num_replicas_in_sync = 2

    monkeypatch.setattr(backbone.tf.distribute, "get_strategy", lambda: Two())
    with pytest.raises(UserError, match="cannot be copied to the 2 replicas.*pass a function"):
        backbone.build(name)


def test_train_with_a_keras_applications_model_object_and_load_it(tmp_path):
    import patchvae_tf
    from patchvae_tf import Encoder

    cfg = tiny_config(str(tmp_path / "w"), train_steps=3, log_every=3, checkpoint_every=3)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, batch_size=8))
    network = resnet_stem()
    before = [w.numpy().copy() for w in network.weights]
    with pytest.raises(UserError, match="preprocessing must be a module-level function"):
        patchvae_tf.train(cfg, PIXELS, encoder=network, preprocessing=lambda x: x / 255.0)
    model = patchvae_tf.train(
        cfg, PIXELS, encoder=network, preprocessing=keras.applications.resnet_v2.preprocess_input
    )
    assert model.config.model.encoder.startswith("keras.Model:")
    assert model.config.model.encoder_preprocessing == PREPROCESS
    assert os.path.isfile(tmp_path / "w" / "backbone.json")
    # The object was trained in place, and the workdir's checkpoint holds what it learned.
    loaded = model.model.encoder.network
    assert loaded is not network
    moved = max(np.abs(w.numpy() - b).max() for w, b in zip(network.weights, before, strict=True))
    assert moved > 1e-4
    for mine, theirs in zip(loaded.weights, network.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    # Pixels in, preprocessing inside: the features are the network's on preprocessed pixels.
    codes = model.encode(PIXELS[:4])
    pixels = next(model._chunks(PIXELS[:4])).numpy()
    want = network(keras.applications.resnet_v2.preprocess_input(pixels.copy()), training=False)
    np.testing.assert_allclose(codes["features"], want.numpy().mean(axis=(1, 2)), atol=1e-4)
    # encoder.keras holds the network and its preprocessing: it loads without this code.
    path = str(tmp_path / "encoder.keras")
    Encoder.from_autoencoder(model.model).save(path)
    again = keras.saving.load_model(path)(tf.constant(pixels))
    for name, value in codes.items():
        np.testing.assert_allclose(again[name].numpy(), value, atol=1e-5)
    # Evaluation builds fresh (random-init) copies from backbone.json, as often as it needs.
    from patchvae_tf.model import models

    for _ in range(2):
        fresh = models.build_model(model.config.model).encoder.network
        assert len(fresh.weights) == len(network.weights) and fresh is not network
    # Resumed with a new object (Keras numbers the new model differently: another digest),
    # the run continues under the workdir's name for it.
    longer = cfg.replace(train=dataclasses.replace(cfg.train, train_steps=5))
    resumed = patchvae_tf.train(
        longer, PIXELS, encoder=resnet_stem(), preprocessing=PREPROCESS.replace(".src", "")
    )
    assert resumed.step == 5 and resumed.config.model.encoder == model.config.model.encoder


@pytest.mark.slow
def test_train_py_takes_encoder_module_function_and_load_imports_it(tmp_path):
    import patchvae_tf

    workdir = str(tmp_path / "w")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    args = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}"]
    flags = [
        "--encoder=test_backbone:resnet_stem",
        f"--encoder_preprocessing={PREPROCESS}",
        "--image_size=32",
        "--scale=8",  # matched to the network: 4
        "--num_parts=4",
        "--appearance_dim=2",
        "--batch_size=8",
        "--train_steps=2",
        "--shapes_train_size=64",
        "--shapes_test_size=16",
        "--mixed_precision=none",
    ]
    bad = subprocess.run(args + ["--encoder=resnet:"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: unknown --encoder 'resnet:'"
    )
    result = subprocess.run(args + flags, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--scale=4 (was 8)" in result.stdout
    model = patchvae_tf.load(workdir)  # imports test_backbone (on sys.path in pytest)
    assert model.config.model.encoder == "test_backbone:resnet_stem" and model.step == 2
    assert model.encode(PIXELS[:2])["occurrence"].shape == (2, 8, 8, 4)


def test_a_backbones_receptive_field_is_measured_as_the_walk_computes_it():
    from patchvae_tf.model import networks
    from patchvae_tf.model.backbone import Backbone
    from patchvae_tf.model.receptive_field import receptive_field

    layers = [
        keras.layers.Conv2D(8, 5, strides=2, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(3, 2, padding="same"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
    ]
    walked = receptive_field(keras.Sequential(layers))  # 5, then 3 at 2, 3 at 4, head at 4
    assert walked == 5 + 2 * 2 + 2 * 4 + 2 * 4 == 25
    inputs = keras.Input((None, None, 3))
    x = inputs
    for layer in layers:
        x = layer(x)
    assert receptive_field(Backbone(keras.Model(inputs, x))) == walked
    resnet = networks.ResNetEncoder(8)
    inputs = keras.Input((None, None, 3))
    assert receptive_field(Backbone(keras.Model(inputs, resnet(inputs)))) == 115
