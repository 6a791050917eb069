"""The export stage: SavedModel for TF Serving, ONNX for edge runtimes, and their agreement."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import APP_DIM, CHANNELS, GRID, PARTS, ROOT, SIZE, random_pixels

from patchvae_tf.config import ExportConfig
from patchvae_tf.errors import UserError


def test_layout_report_and_parity(trained, exported):
    cfg, summary = trained
    ecfg, rep = exported
    root = ecfg.export_dir
    assert rep["version"] == rep["step"] == summary["step"] == 300
    for rel in (
        "saved_model/300/saved_model.pb",
        "saved_model/300/assets.extra/tf_serving_warmup_requests",
        "onnx/encoder.onnx",
        "onnx/encoder.int8.onnx",
        "models.config",
        "export_report.json",
    ):
        assert os.path.isfile(os.path.join(root, rel)), rel
    with open(os.path.join(root, "export_report.json")) as f:
        on_disk = json.load(f)
    assert on_disk["version"] == 300 and on_disk["checkpoint"].endswith("ckpt-300")
    assert on_disk["files"]["onnx/encoder.onnx"] == os.path.getsize(f"{root}/onnx/encoder.onnx")
    # Every float32 comparison, on every output, within the contract's 1e-4.
    comparisons = [
        "saved_model_vs_keras",
        "onnx_vs_keras",
        "onnx_vs_saved_model",
        "onnx_batch1_vs_batch",
        "image_bytes_vs_images",
        "serving_xla_vs_serving_default",
    ]
    for name in comparisons:
        diffs = on_disk["parity"][name]
        assert set(diffs) == {"occurrence", "appearance", "features"}, name
        assert max(diffs.values()) <= 1e-4, (name, diffs)
    assert on_disk["parity"]["images"] == 16
    sig = on_disk["signatures"]["serving_default"]
    assert sig["outputs"]["occurrence"]["shape"] == [None, GRID, GRID, PARTS]
    assert sig["outputs"]["appearance"]["shape"] == [None, PARTS, APP_DIM]
    assert sig["outputs"]["features"]["shape"] == [None, CHANNELS]
    assert on_disk["signatures"]["serve_image_bytes"]["inputs"]["image_bytes"]["dtype"] == "string"
    assert on_disk["warmup_replayed"] == len(on_disk["warmup_requests"]) == 6
    assert on_disk["onnx"]["opset"] >= 17
    assert on_disk["versions"]["tensorflow"].startswith("2.")
    config_text = open(os.path.join(root, "models.config")).read()
    assert "name: 'patchvae'" in config_text and "base_path: '/models/patchvae'" in config_text
    # The default int8 bound (0.99) passes this model, and the report says so.
    assert on_disk["int8"]["written"] and on_disk["int8"]["min_cosine"] == 0.99
    # The top-level names are fixed symlinks into the current export; each file is the one
    # the report's checksums describe, and the SavedModel carries its own report.
    assert os.path.realpath(f"{root}/onnx") == os.path.realpath(f"{root}/current/onnx")
    for rel, digest in on_disk["sha256"].items():
        with open(os.path.join(root, rel), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, rel
    with open(f"{root}/saved_model/300/assets.extra/export/export_report.json") as f:
        assert json.load(f)["export_id"] == on_disk["export_id"]
    # Nothing but the export dir itself next to it: the staging directory is gone.
    assert os.listdir(os.path.dirname(root)) == ["patchvae"]


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_agrees_with_saved_model(exported, loaded, batch):
    import onnx
    import onnxruntime as ort
    import tensorflow as tf

    ecfg, _ = exported
    path = os.path.join(ecfg.export_dir, "onnx", "encoder.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape == ["batch", SIZE, SIZE, 3]
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == ["appearance", "features", "occurrence"]

    pixels = random_pixels(batch, seed=batch)
    got = dict(zip(names, session.run(names, {"images": pixels}), strict=True))
    want = loaded.signatures["serving_default"](images=tf.constant(pixels))
    for k in names:
        assert got[k].shape == tuple(want[k].shape)
        np.testing.assert_allclose(got[k], want[k].numpy(), rtol=0, atol=1e-4, err_msg=k)
    # Not trivially equal: outputs vary across the batch and occurrences are probabilities.
    assert np.all((got["occurrence"] >= 0) & (got["occurrence"] <= 1))
    if batch > 1:
        assert np.ptp(got["features"], axis=0).max() > 1e-3


def test_int8_model_is_smaller_and_close(exported):
    import onnx
    import onnxruntime as ort

    ecfg, rep = exported
    int8 = rep["int8"]
    assert int8["size_bytes"] == os.path.getsize(f"{ecfg.export_dir}/onnx/encoder.int8.onnx")
    assert int8["size_bytes"] < 0.75 * rep["files"]["onnx/encoder.onnx"]
    assert int8["calibration_images"] == 32
    agree = int8["agreement_with_float32"]
    # Close but not identical: a quantized model that matched exactly would not be int8.
    assert agree["features"]["mean_cosine"] > 0.95
    assert 0 < agree["occurrence"]["max_abs"] < 0.5
    path = f"{ecfg.export_dir}/onnx/encoder.int8.onnx"
    kinds = {n.op_type for n in onnx.load(path).graph.node}
    assert "QuantizeLinear" in kinds and "DequantizeLinear" in kinds
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (occ,) = session.run(["occurrence"], {"images": random_pixels(7)})
    assert occ.shape == (7, GRID, GRID, PARTS)


def test_onnx_refuses_wrong_shapes_and_clips_values(exported):
    """The ONNX graph checks nothing itself: ONNX Runtime refuses what its input type rules
    out, and pixel values outside 0..255 are clipped, as serving_default's scaling does.
    """
    import onnxruntime as ort

    ecfg, _ = exported
    path = os.path.join(ecfg.export_dir, "onnx", "encoder.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    cases = [
        (np.zeros((SIZE, SIZE, 3), np.float32), "Invalid rank for input: images"),
        (np.zeros((1, 31, SIZE, 3), np.float32), "invalid dimensions for input: images"),
        (np.zeros((1, SIZE, SIZE, 3), np.float64), "Unexpected input data type"),
    ]
    for images, message in cases:
        with pytest.raises(Exception, match=message):  # onnxruntime's InvalidArgument
            session.run(None, {"images": images})
    pixels = random_pixels(2, seed=5)
    wide = pixels * 2.0 - 200.0  # about half the values fall outside 0..255
    assert (wide < 0).any() and (wide > 255).any()
    got = session.run(None, {"images": wide})
    want = session.run(None, {"images": np.clip(wide, 0.0, 255.0)})
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(got[0], session.run(None, {"images": pixels})[0])
    nan = np.full((1, SIZE, SIZE, 3), np.nan, np.float32)
    assert all(np.isnan(out).all() for out in session.run(None, {"images": nan}))


def test_second_export_of_a_version_is_refused(exported):
    from export import exporter

    ecfg, _ = exported
    report = os.path.join(ecfg.export_dir, "export_report.json")
    before = os.stat(report).st_mtime_ns
    # The checkpoint's step, which the first export used, is published and never replaced.
    with pytest.raises(UserError, match="version 300 already exists"):
        exporter.export(dataclasses.replace(ecfg, version=300))
    # The command line: one line, exit status 2 (an explicit --version is refused before
    # TensorFlow is even imported).
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            f"--workdir={ecfg.workdir}",
            f"--export_dir={ecfg.export_dir}",
            "--version=300",
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: version 300 already exists in {ecfg.export_dir!r} (newest 300); published "
        "versions never change: leave --version unset for 301 or pass a larger one"
    ]
    assert os.stat(report).st_mtime_ns == before


@pytest.mark.slow
def test_failed_check_leaves_no_directory(trained, tmp_path, monkeypatch):
    from export import exporter, parity

    cfg, _ = trained
    target = tmp_path / "out" / "patchvae"
    # A tolerance nothing can meet makes the first parity check fail after the SavedModel
    # has been written to the staging directory.
    monkeypatch.setattr(parity, "TOLERANCE", -1.0)
    ecfg = ExportConfig(
        workdir=cfg.train.workdir, export_dir=str(target), formats=("saved_model",), parity_images=4
    )
    with pytest.raises(parity.ParityError, match="SavedModel vs Keras"):
        exporter.export(ecfg)
    assert os.listdir(tmp_path / "out") == []


def test_checkpoint_without_the_encoder_is_refused(trained, tmp_path):
    import tensorflow as tf

    from export import exporter
    from patchvae_tf.model import models

    cfg, _ = trained
    # A VAE checkpoint shares the encoder but has no occurrence / appearance heads.
    vae = models.build_model(dataclasses.replace(cfg.model, arch="vae"))
    prefix = tf.train.Checkpoint(model=vae).write(str(tmp_path / "vae" / "ckpt-5"))
    ecfg = ExportConfig(
        workdir=cfg.train.workdir, export_dir=str(tmp_path / "e"), checkpoint=prefix, version=1
    )
    with pytest.raises(UserError, match="of workdir .* does not fit the model: model/heads/"):
        exporter.export(ecfg)
    assert not os.path.exists(tmp_path / "e")


def _served(root):
    """The versions TF Serving loads: the numbered names under saved_model/."""
    return sorted(n for n in os.listdir(f"{root}/saved_model") if n.isdigit())


@pytest.mark.slow
def test_vae_exports_its_outputs(trained, tmp_path):
    import tensorflow as tf

    from export import exporter
    from patchvae_tf.model import models
    from patchvae_tf.workdir import CONFIG_FILE

    cfg, _ = trained
    vae_cfg = cfg.replace(
        model=dataclasses.replace(cfg.model, arch="vae"),
        train=dataclasses.replace(cfg.train, workdir=str(tmp_path / "vae")),
    )
    vae = models.build_model(vae_cfg.model)
    os.makedirs(vae_cfg.train.workdir)
    with open(os.path.join(vae_cfg.train.workdir, CONFIG_FILE), "w") as f:
        f.write(vae_cfg.to_json())
    step = tf.Variable(7, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(model=vae, step=step)
    tf.train.CheckpointManager(ckpt, f"{vae_cfg.train.workdir}/checkpoints", 1).save(7)
    ecfg = ExportConfig(
        workdir=vae_cfg.train.workdir, export_dir=str(tmp_path / "e"), parity_images=4
    )
    rep = exporter.export(ecfg)
    assert rep["version"] == 7
    assert rep["outputs"] == {"appearance": [None, PARTS * APP_DIM], "features": [None, CHANNELS]}
    assert max(rep["parity"]["onnx_vs_saved_model"].values()) <= 1e-4
    assert set(rep["signatures"]["serving_default"]["outputs"]) == {"appearance", "features"}

    # Into the existing export dir: a new version lands beside the old one ...
    root = ecfg.export_dir
    onnx_before = os.stat(f"{root}/onnx/encoder.onnx").st_mtime_ns
    again = dataclasses.replace(ecfg, version=8, formats=("saved_model",), parity_images=4)
    assert exporter.export(again)["version"] == 8
    assert _served(root) == ["7", "8"]
    # ... and a re-export of the same checkpoint gets the next number; this one writes ONNX
    # only, so it lands in history/ and TF Serving's versions stay as they were.
    redo = dataclasses.replace(ecfg, formats=("onnx",), parity_images=4)
    assert exporter.export(redo)["version"] == 9
    assert os.stat(f"{root}/onnx/encoder.onnx").st_mtime_ns != onnx_before
    assert _served(root) == ["7", "8"]
    assert os.path.realpath(f"{root}/current") == os.path.realpath(f"{root}/history/9")
    with open(f"{root}/export_report.json") as f:
        assert json.load(f)["version"] == 9
    assert sorted(os.listdir(tmp_path)) == ["e", "vae"]  # no staging directory left over


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workdir": ""}, "--workdir is required"),
        ({"formats": ("saved_model", "tflite")}, "--formats"),
        ({"formats": ("saved_model",), "quantize": "int8"}, "add onnx or litert to --formats"),
        ({"quantize": "int4"}, "unknown --quantize 'int4'"),
        ({"version": -1}, "--version must be >= 0"),
        ({"opset": 13}, "--opset must be in"),
        ({"export_dir": "w"}, "must differ from --workdir"),
    ],
)
def test_export_config_validation(change, message):
    base = ExportConfig(workdir="w", export_dir="e")
    with pytest.raises(UserError, match=message):
        dataclasses.replace(base, **change)


@pytest.mark.parametrize("force", [False, True])
def test_int8_gate_refuses_a_model_below_the_bound_unless_forced(
    trained, tmp_path, force, monkeypatch, capsys
):
    import importlib

    from export import exporter, report

    cfg, _ = trained
    # No int8 model reaches a cosine of exactly 1: the bound refuses it.
    ecfg = ExportConfig(
        workdir=cfg.train.workdir,
        export_dir=str(tmp_path / "e"),
        formats=("onnx", "litert"),
        quantize="int8",
        int8_min_cosine=1.0,
        force_int8=force,
        parity_images=8,
        calibration_images=16,
    )
    rep = exporter.export(ecfg)
    int8 = rep["int8"]
    cosine = int8["agreement_with_float32"]["features"]["mean_cosine"]
    assert 0.9 < cosine < 1.0
    reason = f"mean cosine to float32 is {cosine:.4f} on the parity images, under "
    int8_path = tmp_path / "e" / "onnx" / "encoder.int8.onnx"
    with open(tmp_path / "e" / "export_report.json") as f:
        on_disk = json.load(f)["int8"]
    assert (tmp_path / "e" / "onnx" / "encoder.onnx").is_file()  # float32 kept either way
    if force:
        assert int8["written"] and reason in int8["forced"] and int8_path.is_file()
        assert "onnx/encoder.int8.onnx" in rep["files"]
    else:
        assert not int8["written"] and not int8_path.exists()
        assert reason in int8["refused"] and "--force_int8" in int8["refused"]
        assert on_disk["refused"] == int8["refused"]
    assert ("onnx/encoder.int8.onnx" in rep["sha256"]) == force
    # The LiteRT int8 model, from the same calibration images, passes the same gate.
    lite = rep["litert_int8"]
    lite_cosine = lite["agreement_with_float32"]["features"]["mean_cosine"]
    assert 0.9 < lite_cosine < 1.0
    lite_path = tmp_path / "e" / "litert" / "encoder.int8.tflite"
    assert (tmp_path / "e" / "litert" / "encoder.tflite").is_file()
    assert lite["written"] == force == lite_path.is_file()
    assert f"mean cosine to float32 is {lite_cosine:.4f}" in lite["forced" if force else "refused"]
    # python -m export's stderr: one warning per refused model, not repeated in the summary.
    refused = [] if force else [("int8", int8["refused"]), ("LiteRT int8", lite["refused"])]
    assert report.refusals(rep) == [f"warning: {n} model not written: {r}" for n, r in refused]
    summary = exporter.summary(ecfg, rep)
    assert "int8 vs float32" in summary and all(r not in summary for _, r in refused)
    # What python -m export prints of this report: the summary, then the warnings, once each.
    monkeypatch.setattr(exporter, "export", lambda _: rep)
    capsys.readouterr()
    importlib.import_module("export.__main__").main(ecfg)
    out, err = capsys.readouterr()
    assert out == summary + "\n" and err.splitlines() == report.refusals(rep)
    assert ("litert/encoder.int8.tflite" in rep["sha256"]) == force


@pytest.mark.parametrize(
    "source, value, folded", [("Relu", 0.0, 1), ("Sigmoid", 0.0, 0), ("Relu", 1.0, 0)]
)
def test_zero_pad_after_relu_folds_into_max_pool_with_the_same_outputs(source, value, folded):
    """The stem's Pad + MaxPool becomes one padded MaxPool only where that is exact: after a
    Relu (values >= 0) and with a zero border.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from export import onnx_export

    graph = helper.make_graph(
        [
            helper.make_node(source, ["x"], ["act"]),
            helper.make_node("Pad", ["act", "pads", "value"], ["padded"]),
            helper.make_node("MaxPool", ["padded"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
        ],
        "stem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 4])],
        [
            numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
            numpy_helper.from_array(np.array(value, np.float32), "value"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]

    want = run(model)
    assert onnx_export.fold_pad_into_max_pool(model) == folded
    onnx.checker.check_model(model, full_check=True)
    kinds = [n.op_type for n in model.graph.node]
    assert kinds == ([source, "MaxPool"] if folded else [source, "Pad", "MaxPool"])
    assert want.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(run(model), want)
