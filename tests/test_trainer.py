"""patchvae_tf.train(): data passed from Python (arrays, files, tf.data), what the workdir
records about it, and the commands that refuse to read it again.
"""

import dataclasses
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PIXELS, library_worker, tiny_config

from patchvae_tf import data
from patchvae_tf.data import python_source
from patchvae_tf.errors import UserError


def _stream(source, start, count, batch=1):
    ds = data.input_dataset(source, "train", batch, training=True, seed=3, start=start)
    return np.concatenate([b["image"].numpy() for b in ds.take(count)])


def _files(tmp_path):
    from PIL import Image

    paths = []
    for i, image in enumerate(PIXELS):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.mark.parametrize("kind", ["array", "files", "dataset", "function"])
def test_python_data_resumes_at_any_example_exactly(kind, tmp_path):
    given = {
        "array": lambda: (PIXELS, np.arange(13)),
        "files": lambda: _files(tmp_path),
        "dataset": lambda: tf.data.Dataset.from_tensor_slices({"image": PIXELS}),
        # Built afresh at each call: a seeded reshuffling stream starts over identically.
        "function": lambda: (
            lambda ctx: tf.data.Dataset.from_tensor_slices(PIXELS).shuffle(13, seed=5).batch(4)
        ),
    }[kind]()
    source = python_source.python_source(given, 16)
    assert source.name == "python:" + kind
    whole = _stream(source, 0, 30)  # more than two epochs
    assert whole.shape == (30, 16, 16, 3)
    for start in (1, 13, 17):
        np.testing.assert_array_equal(_stream(source, start, 30 - start), whole[start:])
    # Every image is resized and centre-cropped as the folder and TFDS pipelines do it.
    expected = data.preprocess_image(tf.constant(PIXELS[0]), 16).numpy()
    found = [np.abs(img - expected).max() for img in whole[:13]]
    assert min(found) <= 1e-6  # image 0 is among the first epoch's images
    if kind != "dataset":  # shuffled per epoch (from our seed or the function's)
        assert np.abs(whole[:13] - whole[13:26]).max() > 0.1
    else:  # read in the dataset's own order
        np.testing.assert_allclose(whole[0], expected, atol=1e-6)


def test_images_of_any_dtype_and_channels_are_read_as_rgb_pixels():
    grey = np.random.default_rng(8).integers(0, 256, size=(3, 24, 24), dtype=np.uint8)
    for given in (grey, grey.astype(np.float32), grey[..., None].astype(np.int32)):
        source = python_source.python_source(tf.data.Dataset.from_tensor_slices(given), 8)
        got = next(iter(data.input_dataset(source, "test", 3, training=False)))["image"].numpy()
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        want = np.stack([data.preprocess_image(tf.constant(x), 8).numpy() for x in rgb])
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(
    "given, message",
    [
        (PIXELS / 255.0, "pixels in [0, 1]?"),
        (PIXELS.astype(np.float32) - 10.0, "expected pixels in [0, 255]"),
        (tf.data.Dataset.from_tensor_slices({"x": PIXELS}), "without an 'image' (keys ['x'])"),
        (tf.data.Dataset.from_tensor_slices(PIXELS[:, :, :, :2].reshape(13, -1)), "shape (1120,)"),
        (tf.data.Dataset.from_tensor_slices(PIXELS[:0]), "the dataset is empty"),
        (["/no/such.png"], "1 of the 1 image files do not exist, first '/no/such.png'"),
        ({"image": PIXELS}, "got a dict"),
        (lambda ctx: PIXELS, "returned a ndarray, not a tf.data.Dataset"),
    ],
)
def test_what_training_cannot_read_is_refused_in_one_line(given, message):
    with pytest.raises(UserError) as e:
        python_source.python_source(given, 16)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_dataset_object_is_not_split_across_workers_a_function_is():
    two = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
    source = python_source.python_source(tf.data.Dataset.from_tensor_slices(PIXELS), 8)
    with pytest.raises(UserError, match="cannot be split across the 2 input pipelines.*pass a "):
        source.readers["train"](two, 0, 0)

    def shard(ctx):
        ds = tf.data.Dataset.from_tensor_slices(PIXELS)
        return ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)

    source = python_source.python_source(shard, 8)
    mine = np.stack([ex["image"].numpy() for ex in source.readers["test"](two, None)])
    want = [data.preprocess_image(tf.constant(x), 8).numpy() for x in PIXELS[1::2]]
    np.testing.assert_allclose(mine, np.stack(want), atol=1e-6)  # the odd images: shard 1


def test_train_on_an_array_records_it_and_the_commands_refuse_to_read_it(tmp_path, capsys):
    import patchvae_tf
    from patchvae_tf.config import EvalConfig, load_config
    from patchvae_tf.evaluation.setup import setup as eval_setup

    cfg = tiny_config(str(tmp_path / "w"), train_steps=4, log_every=2, checkpoint_every=2)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, batch_size=8))
    model = patchvae_tf.train(cfg, PIXELS)
    assert model.step == 4 and model.config.data.dataset == "python:array"
    with open(tmp_path / "w" / "config.json") as f:
        assert json.load(f)["data"]["dataset"] == "python:array"
    assert set(model.encode(PIXELS[:2])) == {"occurrence", "appearance", "features"}
    saved = load_config(str(tmp_path / "w" / "config.json"))
    with pytest.raises(UserError, match="trained on data passed from Python") as e:
        data.get_source(saved.data, 32)
    assert "evaluate.py --dataset=" in str(e.value)
    with pytest.raises(UserError, match="trained on data passed from Python"):
        eval_setup(EvalConfig(workdir=str(tmp_path / "w"), mode="probe"))
    # Training on it again resumes (the array resumes exactly: no note about it).
    longer = cfg.replace(train=dataclasses.replace(cfg.train, train_steps=6))
    capsys.readouterr()
    assert patchvae_tf.train(longer, PIXELS).step == 6
    out = capsys.readouterr().out
    assert "resuming from step 4" in out and "note: resuming on a tf.data.Dataset" not in out


def _write_pngs(folder, images):
    from PIL import Image

    os.makedirs(folder)
    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(folder, f"{i:02d}.png"))


def test_export_without_the_training_data_checks_on_a_folder_and_calibrates_only_on_one(
    trained, tmp_path
):
    from export import exporter
    from patchvae_tf.config import ExportConfig
    from patchvae_tf.config.checks import validate_export

    cfg, _ = trained
    python_data = tmp_path / "w"
    shutil.copytree(cfg.train.workdir, python_data, ignore=shutil.ignore_patterns("logs"))
    config = json.loads((python_data / "config.json").read_text())
    config["data"]["dataset"] = "python:dataset"  # as if trained on a tf.data.Dataset
    (python_data / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"^--check_images='/no/such' is not a directory$"):
        validate_export(ExportConfig(workdir="w", export_dir="e", check_images="/no/such"))
    base = dict(workdir=str(python_data), formats=("onnx",), parity_images=6)
    with pytest.raises(UserError) as e:
        exporter.export(ExportConfig(export_dir=str(tmp_path / "e0"), quantize="int8", **base))
    assert str(e.value) == (
        "--quantize=int8 calibrates on real images and the training data is not available "
        "(the model was trained on data passed from Python, 'python:dataset'); pass "
        "--calibration_folder=FOLDER"
    )
    assert not os.path.exists(tmp_path / "e0")
    _write_pngs(tmp_path / "check", PIXELS[:5])
    _write_pngs(tmp_path / "calib", PIXELS[5:])
    rep = exporter.export(
        ExportConfig(
            export_dir=str(tmp_path / "e1"),
            check_images=str(tmp_path / "check"),
            quantize="int8",
            calibration_folder=str(tmp_path / "calib"),
            calibration_images=6,
            force_int8=True,
            **base,
        )
    )
    assert rep["parity"]["images"] == 5  # every image of the folder (fewer than asked for)
    assert rep["parity"]["checked_on"] == f"5 images of --check_images={tmp_path / 'check'}"
    assert rep["calibrated_on"] == "6 images of --calibration_folder"
    assert rep["int8"]["calibration_images"] == 6 and rep["int8"]["written"]
    card = (tmp_path / "e1" / "MODEL_CARD.md").read_text()
    assert f"- checked on 5 images of --check_images={tmp_path / 'check'}" in card


def test_notebook_own_data_backbone_callback_then_export_from_the_workdir_alone(
    tmp_path, monkeypatch
):
    """The issue's whole path, as in a notebook: images in a tf.data.Dataset, a
    keras.applications backbone, a callback that stops training; load() the result, export
    it where no training data is, and every runtime agrees with load().encode.
    """
    import onnxruntime as ort

    import patchvae_tf
    from export import exporter, litert_export
    from patchvae_tf.config import ExportConfig

    def mobilenet_stem():  # defined in the notebook: kept as backbone.json
        base = keras.applications.MobileNetV2(weights=None, include_top=False, alpha=0.35)
        return keras.Model(base.input, base.get_layer("block_2_add").output)

    class StopAt(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            if step >= 3:
                self.model.stop_training = True

    cfg = tiny_config(str(tmp_path / "run"), train_steps=1000, log_every=1, checkpoint_every=500)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, batch_size=8))
    images = tf.data.Dataset.from_tensor_slices({"image": PIXELS, "label": np.arange(13)})
    model = patchvae_tf.train(
        cfg,
        images.shuffle(13, seed=0),
        encoder=mobilenet_stem,
        preprocessing=keras.applications.mobilenet_v2.preprocess_input,
        callbacks=[StopAt()],
    )
    assert model.step == 3 and model.config.model.scale == 4  # block_2_add: 1/4, 8 x 8 cells
    codes = model.encode(PIXELS)

    monkeypatch.chdir(tmp_path)  # nothing of the data here: the export has the workdir alone
    ecfg = ExportConfig(
        workdir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
        formats=("saved_model", "onnx", "keras", "litert"),
        parity_images=4,
    )
    rep = exporter.export(ecfg)
    assert rep["parity"]["checked_on"].startswith("4 images drawn from the model's own decoder")
    assert "drawn from the model's own decoder" in rep["model_card"]["parity_checked_on"]

    pixels = next(model._chunks(PIXELS)).numpy()  # resized and cropped, 0..255
    served = tf.saved_model.load(str(tmp_path / "export" / "saved_model" / str(rep["version"])))
    outputs = {"serving_default": served.signatures["serving_default"](images=pixels)}
    pngs = tf.stack([tf.io.encode_png(tf.constant(p)) for p in PIXELS])
    outputs["serve_image_bytes"] = served.signatures["serve_image_bytes"](image_bytes=pngs)
    for name, signature in served.signatures.items():  # a uint8 pixel signature, if any
        inputs = signature.structured_input_signature[1]
        if [spec.dtype for spec in inputs.values()] == [tf.uint8]:
            outputs[name] = signature(**{next(iter(inputs)): tf.constant(PIXELS)})
    session = ort.InferenceSession(str(tmp_path / "export" / "onnx" / "encoder.onnx"))
    names = [o.name for o in session.get_outputs()]
    outputs["onnx"] = dict(zip(names, session.run(names, {"images": pixels}), strict=True))
    litert = litert_export.interpreter(str(tmp_path / "export" / "litert" / "encoder.tflite"))
    outputs["litert"] = litert_export.runner(litert)(pixels)
    outputs["load(export)"] = patchvae_tf.load(str(tmp_path / "export")).encode(PIXELS)
    for where, out in outputs.items():
        for name, want in codes.items():
            np.testing.assert_allclose(np.asarray(out[name]), want, atol=2e-5, err_msg=where)


@pytest.mark.slow
def test_a_dataset_and_a_backbone_function_train_under_a_mirrored_strategy(tmp_path):
    cfg = tiny_config(str(tmp_path / "w"), train_steps=3, log_every=1, checkpoint_every=3)
    cfg = cfg.replace(
        train=dataclasses.replace(cfg.train, batch_size=8),
        distribute=dataclasses.replace(cfg.distribute, strategy="mirrored", virtual_cpu_devices=2),
    )
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    proc = library_worker(tmp_path / "cfg.json", "mirrored")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    lines = out.splitlines()
    refused = [line for line in lines if line.startswith("REFUSED")]
    assert refused == [
        "REFUSED a keras.Model object cannot be copied to the 2 replicas of this strategy; "
        "pass a function that builds it (encoder=make_backbone), which training calls inside "
        "the strategy's scope"
    ]
    assert [line for line in lines if line.startswith("RESULT 3 keras.Model:")]
