"""The int8 models stay finite and close on the extremes of the valid input range."""

import os
import subprocess
import sys

import numpy as np
import pytest

from export import quantize, stress


def test_stress_sets_cover_the_range():
    rng = np.random.default_rng(0)
    images = np.zeros((4, 16, 16, 3), np.float32)
    images[:, 4:12, 4:12] = rng.uniform(0, 255, (4, 1, 1, 3))  # a square on black
    sets = stress.stress_images(images)
    assert sets["uniform"].shape == (4, 16, 16, 3)
    assert [float(u.max()) for u in sets["uniform"]] == list(stress.UNIFORM_LEVELS)
    white = sets["white_background"]
    assert np.all(white[:, 0, 0] == 255.0) and np.all(white[:, 8, 8] == images[:, 8, 8])
    assert np.all(sets["black_background"][:, 0, 0] == 0.0)
    assert sets["bright"].min() >= 200.0 and sets["dark"].max() <= 55.0
    assert sets["noise"].min() >= 0.0 and sets["noise"].max() <= 255.0
    assert len(stress.stack(sets)) == sum(len(v) for v in sets.values())


def test_gate_refuses_errors_non_finite_values_and_low_cosine_on_stress_sets():
    good = {"features": {"mean_cosine": 0.999}}
    ok = {"agreement": good, "non_finite": 0}
    assert quantize.gate(good, 0.99, {"uniform": ok, "noise": ok}) == ""
    assert "24 non-finite values on the uniform" in quantize.gate(
        good, 0.99, {"uniform": {**ok, "non_finite": 24}}
    )
    assert "fails on the uniform stress images: div.cc" in quantize.gate(
        good, 0.99, {"uniform": {"error": "div.cc:262 data[i] != zero_point"}}
    )
    low = {"agreement": {"features": {"mean_cosine": 0.9}}, "non_finite": 0}
    assert "0.9000 on the white_background stress" in quantize.gate(
        good, 0.99, {"white_background": low}
    )
    assert "on the parity images" in quantize.gate({"features": {"mean_cosine": 0.5}}, 0.99)


def test_int8_models_are_finite_and_close_on_every_stress_set(exported):
    ecfg, rep = exported
    for key in ("int8", "litert_int8"):
        entry = rep[key]
        assert entry["written"] and "stay float32" in entry["method"]
        assert set(entry["stress"]) == {
            "uniform", "white_background", "black_background", "bright", "dark", "noise",
        }  # fmt: skip
        for name, result in entry["stress"].items():
            assert "error" not in result, (key, name, result)
            assert result["non_finite"] == 0, (key, name)
            cosine = result["agreement"]["features"]["mean_cosine"]
            assert cosine >= ecfg.int8_min_cosine, (key, name, cosine)
    # The calibration covered the training images and their extremes (6 variants of each, and
    # 4 uniform images).
    assert rep["int8"]["calibration_images"] == ecfg.calibration_images == 32
    assert rep["int8"]["calibration_extremes"] == 4 + 5 * 32


def test_the_pooling_stays_float_in_the_int8_models(exported):
    import onnx

    from export import litert_export

    ecfg, _ = exported
    model = onnx.load(os.path.join(ecfg.export_dir, "onnx", "encoder.int8.onnx"))
    producers = {out: n for n in model.graph.node for out in n.output}
    divs = [n for n in model.graph.node if n.op_type == "Div"]
    assert divs
    for div in divs:  # the divisor (the sum + eps) is computed in float, not dequantized
        assert producers[div.input[1]].op_type != "DequantizeLinear"
    lite = os.path.join(ecfg.export_dir, "litert", "encoder.int8.tflite")
    interp = litert_export.interpreter(lite, 1, delegates=False)
    interp.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    div_out = [dtypes[int(op["outputs"][0])] for op in ops if op["op_name"] == "DIV"]
    conv_out = {dtypes[int(op["outputs"][0])] for op in ops if op["op_name"] == "CONV_2D"}
    assert div_out == ["float32"] and conv_out == {"int8"}


@pytest.mark.slow
def test_an_empty_batch_gives_empty_outputs_in_onnx_runtime(exported):
    """In a fresh process: the int8 model used to crash ONNX Runtime (exit 139) here."""
    ecfg, _ = exported
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "names = [o.name for o in s.get_outputs()]\n"
        "out = s.run(names, {'images': np.zeros((0, 32, 32, 3), np.float32)})\n"
        "print(sorted(o.shape[0] for o in out))\n"
    )
    for name in ("encoder.onnx", "encoder.int8.onnx"):
        path = os.path.join(ecfg.export_dir, "onnx", name)
        proc = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.returncode, proc.stderr[-500:])
        assert proc.stdout.split()[-1] == "0]" and proc.stdout.count("0") == 3, proc.stdout


def test_what_bare_model_files_do_with_nan_and_empty_batches(exported):
    """The table of docs/serving.md: what a caller of a bare .onnx / .tflite must check."""
    import onnxruntime as ort

    from export import litert_export

    ecfg, _ = exported
    nan = np.full((1, 32, 32, 3), np.nan, np.float32)
    for name, finite in (("encoder.onnx", False), ("encoder.int8.onnx", True)):
        path = os.path.join(ecfg.export_dir, "onnx", name)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        out = session.run(names, {"images": nan})
        assert all(np.all(np.isfinite(o)) == finite for o in out), name
    for name, finite in (("encoder.tflite", False), ("encoder.int8.tflite", True)):
        path = os.path.join(ecfg.export_dir, "litert", name)
        run = litert_export.runner(litert_export.interpreter(path))
        assert all(np.all(np.isfinite(o)) == finite for o in run(nan).values()), name
        with pytest.raises(RuntimeError, match="XNNPack"):
            litert_export.runner(litert_export.interpreter(path))(np.zeros((0, 32, 32, 3)))
