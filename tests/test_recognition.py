"""The recognizer end to end: K labels per class of a folder the tests write, its workdir,
resume and strict restore, its export to every runtime, and load(...).classify."""

import glob
import json
import os

import numpy as np
import pytest

from patchvae_tf.config import RecognizerConfig
from patchvae_tf.errors import UserError


def _test_files(folder):
    return sorted(glob.glob(os.path.join(folder, "test", "*", "*.png")))


def test_draw_takes_k_per_class_with_a_seed_and_holds_out_validation():
    from patchvae_tf.recognition import labels

    y = np.array([0] * 50 + [1] * 30 + [2] * 4)
    a = labels.draw(y, 3, per_class=10, share=0.2, seed=1)
    b = labels.draw(y, 3, per_class=10, share=0.2, seed=1)
    c = labels.draw(y, 3, per_class=10, share=0.2, seed=2)
    np.testing.assert_array_equal(a.train, b.train)
    assert set(a.train) != set(c.train)
    # 10 of each class (all 4 of the last), 2, 2 and 1 of them held out, none twice.
    assert np.bincount(y[a.train]).tolist() == [8, 8, 3]
    assert np.bincount(y[a.validation]).tolist() == [2, 2, 1]
    assert not set(a.train) & set(a.validation)
    assert a.available == (50, 30, 4)
    every = labels.draw(y, 3, per_class=0, share=0.0, seed=0)
    assert len(every.train) == len(y) and len(every.validation) == 0


def test_recognizer_beats_the_majority_label_and_keeps_its_workdir(recognizer, shapes_folder):
    from patchvae_tf.recognition import recognizer as rec

    rcfg, results = recognizer
    test = results["test"]
    assert test["examples"] == len(_test_files(shapes_folder))
    assert test["top1"] > test["majority_top1"] + 0.05, test
    assert sorted(test["per_class_top1"]) == ["circle", "square", "triangle"]
    # 20 per class, 4 of each held out: 48 trained on, 12 validated on.
    assert results["train_examples"] == 48 and results["validation_examples"] == 12
    saved = json.load(open(os.path.join(rcfg.workdir, "config.json")))
    assert saved["encoder"]["workdir"] == os.path.abspath(rcfg.encoder_workdir)
    assert saved["encoder"]["step"] == 300
    assert saved["class_names"] == ["circle", "square", "triangle"]
    labels_txt = open(os.path.join(rcfg.workdir, "labels.txt")).read().split()
    assert labels_txt == ["circle", "square", "triangle"]
    assert glob.glob(os.path.join(rcfg.workdir, "logs", "events.out.tfevents.*"))
    # Model selection: the kept checkpoint is the best validation epoch's.
    assert "/best/" in results["checkpoint"]
    assert rec.restore(rcfg.workdir).path == results["checkpoint"]


def test_recognizer_resumes_and_refuses_other_settings(recognizer, capsys):
    import dataclasses

    from patchvae_tf.recognition import recognizer as rec

    rcfg, results = recognizer
    again = rec.train(rcfg)
    assert again["epoch_losses"] == []  # every epoch was done
    assert again["test"]["top1"] == results["test"]["top1"]
    with pytest.raises(UserError, match="--classifier_head='linear', not 'pool'"):
        rec.train(dataclasses.replace(rcfg, classifier_head="pool"))


def test_recognizer_restores_strictly(recognizer, tmp_path):
    """A checkpoint whose head differs from the config's is refused, naming a variable."""
    import shutil

    from patchvae_tf.recognition import recognizer as rec
    from patchvae_tf.restore import CheckpointMismatch

    rcfg, _ = recognizer
    copy = str(tmp_path / "copy")
    shutil.copytree(rcfg.workdir, copy)
    path = os.path.join(copy, "config.json")
    saved = json.load(open(path))
    saved["recognizer"]["classifier_input"] = "codes"  # the dense layer reads N + N L inputs
    json.dump(saved, open(path, "w"))
    with pytest.raises(CheckpointMismatch, match="has shape"):
        rec.restore(copy)


def test_codes_and_linear_heads_read_what_they_say(trained):
    """--classifier_input=codes feeds the head q_occ (max over the grid) beside the appearance
    means; the linear head is one dense layer on it.
    """
    import tensorflow as tf

    from patchvae_tf.model import models
    from patchvae_tf.recognition import Classifier

    cfg, _ = trained
    model = models.build_model(cfg.model)
    clf = Classifier(model, 3, 2, head="linear", inputs="codes")
    x = tf.random.stateless_uniform([4, 32, 32, 3], seed=[3, 4], minval=-1.0, maxval=1.0)
    enc = model.encode(x)
    codes = np.concatenate(
        [enc["occurrence"].numpy().max(axis=(1, 2)), enc["appearance"].numpy().reshape(4, -1)], 1
    )
    (dense,) = [layer for layer in clf.head.layers if hasattr(layer, "kernel")]
    expected = codes @ dense.kernel.numpy() + dense.bias.numpy()
    np.testing.assert_allclose(clf.logits(x, False).numpy(), expected, rtol=1e-4, atol=1e-6)
    assert clf.variables == clf.head.trainable_variables  # the whole encoder frozen


def test_recognizer_config_refuses_bad_values():
    with pytest.raises(UserError, match="--encoder_workdir is required"):
        RecognizerConfig(workdir="c")
    with pytest.raises(UserError, match="must differ"):
        RecognizerConfig(encoder_workdir="w", workdir="w")
    with pytest.raises(UserError, match="classifier_input.*'pixels'"):
        RecognizerConfig(encoder_workdir="w", workdir="c", classifier_input="pixels")
    with pytest.raises(UserError, match="validation_share"):
        RecognizerConfig(encoder_workdir="w", workdir="c", validation_share=1.0)


def test_the_export_agrees_on_every_test_image(recognizer_export, shapes_folder):
    _, rep = recognizer_export
    assert rep["test"]["images"] == len(_test_files(shapes_folder))
    for runtime in ("saved_model", "onnxruntime", "litert"):
        agreement = rep["agreement"][runtime]
        assert agreement["top1_agreement"] == 1.0, (runtime, agreement)
        assert agreement["max_abs_probability"] < 1e-4
        assert agreement["test_top1"] == pytest.approx(rep["test"]["keras_top1"])
    assert rep["method_names"]["classification"] == "tensorflow/serving/classify"
    assert rep["method_names"]["serving_default"] == "tensorflow/serving/predict"
    for key in ("onnx_int8", "litert_int8"):
        assert rep[key]["top1_agreement_with_float32"] >= 0.0  # recorded either way
        assert rep[key]["written"] == (rep[key]["top1_agreement_with_float32"] >= 0.98)


def test_the_export_restores_the_checkpoint_named(recognizer, recognizer_export, tmp_path):
    """--checkpoint exports that checkpoint, not the best one the export takes by default."""
    import onnxruntime as ort
    from conftest import random_pixels

    from export import recognizer_export as rx
    from patchvae_tf.config import ExportConfig

    rcfg, _ = recognizer
    ecfg, rep = recognizer_export
    assert rep["checkpoint"].endswith(os.path.join("best", "ckpt-20"))
    named = os.path.join(rcfg.workdir, "checkpoints", "ckpt-40")
    out = str(tmp_path / "e")
    again = rx.export(
        ExportConfig(workdir=rcfg.workdir, export_dir=out, checkpoint=named, formats=("onnx",))
    )
    assert again["checkpoint"] == named and again["version"] == again["step"] == 40

    def probabilities(root):
        session = ort.InferenceSession(os.path.join(root, "onnx", "recognizer.onnx"))
        return session.run(None, {"images": random_pixels(4, seed=3)})[0]

    assert np.abs(probabilities(out) - probabilities(ecfg.export_dir)).max() > 1e-3


def test_predict_classify_onnx_litert_and_classify_give_the_same_classes(
    recognizer, recognizer_export, shapes_folder
):
    """The SavedModel's Predict and its Classify in a TF 1 session (as TF Serving loads it),
    ONNX Runtime, LiteRT and load(...).classify, on the folder's test files.
    """
    import onnxruntime as ort
    import tensorflow as tf

    import patchvae_tf
    from export import litert_export
    from export import recognizer_serving as rs

    rcfg, _ = recognizer
    ecfg, _ = recognizer_export
    files = _test_files(shapes_folder)[::5]
    blobs = [open(f, "rb").read() for f in files]
    pixels = np.stack([tf.io.decode_png(b).numpy() for b in blobs]).astype(np.float32)
    names = ["circle", "square", "triangle"]

    version = os.path.join(ecfg.export_dir, "saved_model", str(_version(ecfg)))
    loaded = tf.saved_model.load(version)
    predict = loaded.signatures["serving_default"](images=tf.constant(pixels))
    probabilities = predict["probabilities"].numpy()
    top = np.argmax(probabilities, 1)
    assert [n.decode() for n in predict["class_names"].numpy()[:, 0]] == [names[i] for i in top]

    session = rs.session_classify(version, [rs.example(b) for b in blobs])
    assert session["method_name"] == "tensorflow/serving/classify"
    assert session["classes"][0] == names
    np.testing.assert_allclose(session["scores"], probabilities, atol=1e-5)

    onnx_path = os.path.join(ecfg.export_dir, "onnx", "recognizer.onnx")
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    assert json.loads(sess.get_modelmeta().custom_metadata_map["class_names"]) == names
    np.testing.assert_array_equal(np.argmax(sess.run(None, {"images": pixels})[0], 1), top)

    tflite = os.path.join(ecfg.export_dir, "litert", "recognizer.tflite")
    run = litert_export.runner(litert_export.interpreter(tflite))
    np.testing.assert_array_equal(np.argmax(run(pixels)["probabilities"], 1), top)
    labels_txt = open(os.path.join(ecfg.export_dir, "litert", "labels.txt")).read().split()
    assert labels_txt == names

    for path in (ecfg.export_dir, rcfg.workdir):
        out = patchvae_tf.load(path).classify(files)
        np.testing.assert_array_equal(out["classes"], top)
        assert list(out["class_names"]) == [names[i] for i in top]
        np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-4)


def _version(ecfg):
    return max(int(v) for v in os.listdir(os.path.join(ecfg.export_dir, "saved_model")))


def test_classify_method_name_is_set_by_the_rewrite(tmp_path):
    """tf.saved_model.save writes predict for a classification signature; the rewrite makes
    it classify (so the export's check above can fail).
    """
    import tensorflow as tf

    from export import recognizer_serving as rs

    module = tf.Module()
    module.f = tf.function(
        lambda inputs: {"scores": tf.zeros([tf.size(inputs), 2])},
        input_signature=[tf.TensorSpec([None], tf.string, name="inputs")],
    )
    path = str(tmp_path / "m")
    tf.saved_model.save(module, path, signatures={rs.CLASSIFY_SIGNATURE: module.f})
    assert rs.method_names(path)[rs.CLASSIFY_SIGNATURE] == "tensorflow/serving/predict"
    assert rs.set_classify_method(path) == "tensorflow/serving/classify"


def test_compare_refuses_a_different_top1_class():
    from export import parity
    from export.recognizer_export import compare

    keras = np.array([[0.7, 0.3], [0.2, 0.8]])
    labels = np.array([0, 1])
    assert compare("x", keras.copy(), keras, labels)["top1_agreement"] == 1.0
    swapped = keras[:, ::-1].copy()
    with pytest.raises(parity.ParityError):
        compare("x", swapped, keras, labels)


def test_classify_refuses_what_encode_refuses(recognizer_export):
    import patchvae_tf

    ecfg, _ = recognizer_export
    model = patchvae_tf.load(ecfg.export_dir)
    with pytest.raises(ValueError, match="has shape"):
        model.classify(np.zeros([1, 32, 32, 2], np.uint8))
    with pytest.raises(ValueError, match="wrap it in a list"):
        model.classify("image.png")


def test_classify_needs_a_recognizer(trained):
    import patchvae_tf

    cfg, _ = trained
    with pytest.raises(ValueError, match="classify needs a recognizer"):
        patchvae_tf.load(cfg.train.workdir).classify(np.zeros([1, 32, 32, 3], np.uint8))


def test_class_names_come_from_folders_and_tfds(shapes_folder, tiny_tfds):
    from patchvae_tf import data
    from patchvae_tf.config import DataConfig

    folder = data.get_source(DataConfig(dataset=f"folder:{shapes_folder}"), 32)
    assert folder.class_names == ("circle", "square", "triangle")
    assert sorted(set(folder.labels["train"])) == [0, 1, 2]
    tfds = data.get_source(DataConfig(dataset="patchvae_tiny_images", data_dir=tiny_tfds), 8)
    assert tfds.class_names == ("0", "1", "2")  # ClassLabel(num_classes=3)'s names


def test_a_run_killed_before_its_first_checkpoint_starts_from_the_encoder(recognizer, tmp_path):
    """config.json written, no checkpoint yet: the same command trains from the encoder's
    weights (step 300), as the first run did, to the same recognizer.
    """
    import dataclasses
    import shutil

    from patchvae_tf.recognition import recognizer as rec

    rcfg, results = recognizer
    again = dataclasses.replace(rcfg, workdir=str(tmp_path / "killed"))
    os.makedirs(again.workdir)
    shutil.copy(os.path.join(rcfg.workdir, "config.json"), again.workdir)
    rerun = rec.train(again)
    assert rerun["encoder_step"] == 300
    assert rerun["test"]["top1"] == pytest.approx(results["test"]["top1"], abs=0.02)
