"""OpenVINO as a consumer of the exported ONNX files, checked against ONNX Runtime."""

import os

import numpy as np
import pytest

SIZE = 32  # tests/conftest.py tiny_config
NAMES = ["appearance", "features", "occurrence"]


def _compile(path):
    """What docs/serving.md tells an OpenVINO user to do: read the ONNX file, compile it for
    the CPU in float32 (on CPUs with AVX512_BF16 or AMX the default is bfloat16).
    """
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled


def _run_ov(compiled, x):
    result = compiled.create_infer_request().infer({"images": x})
    return {o.get_any_name(): result[o] for o in compiled.outputs}


def _run_ort(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": x}), strict=True))


def _cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(
        np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    )


@pytest.fixture(scope="module")
def parity_pixels(trained):
    """The export's parity images, 0..255 (real training images, not calibration ones)."""
    from export import images

    cfg, _ = trained
    return ((images.training_images(cfg, 16) + 1.0) * 127.5).astype(np.float32)


def test_openvino_reads_the_onnx_model_with_its_names_and_dynamic_batch(exported):
    ecfg, _ = exported
    compiled = _compile(os.path.join(ecfg.export_dir, "onnx", "encoder.onnx"))
    (inp,) = compiled.inputs
    assert inp.get_any_name() == "images"
    assert (
        inp.get_partial_shape().is_dynamic
        and str(inp.get_partial_shape()) == f"[?,{SIZE},{SIZE},3]"
    )
    assert sorted(o.get_any_name() for o in compiled.outputs) == NAMES
    assert compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"


@pytest.mark.parametrize("batch", [1, 7])
def test_float32_openvino_matches_onnx_runtime(exported, parity_pixels, batch):
    ecfg, _ = exported
    path = os.path.join(ecfg.export_dir, "onnx", "encoder.onnx")
    x = parity_pixels[:batch]
    got, want = _run_ov(_compile(path), x), _run_ort(path, x)
    for k in NAMES:
        assert got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-4, err_msg=k)
    if batch > 1:
        assert np.ptp(got["features"], axis=0).max() > 1e-3  # real, varying outputs


def test_int8_openvino_agrees_with_onnx_runtime(exported, parity_pixels):
    ecfg, _ = exported
    path = os.path.join(ecfg.export_dir, "onnx", "encoder.int8.onnx")
    got, want = _run_ov(_compile(path), parity_pixels), _run_ort(path, parity_pixels)
    float32 = _run_ort(os.path.join(ecfg.export_dir, "onnx", "encoder.onnx"), parity_pixels)
    assert _cosine(got["features"], want["features"]) >= 0.99
    # Against float32 too: OpenVINO runs the quantized graph, it does not undo it.
    assert _cosine(got["features"], float32["features"]) >= 0.99
    assert np.abs(got["occurrence"] - float32["occurrence"]).max() > 0
    assert np.all((got["occurrence"] >= 0) & (got["occurrence"] <= 1))
