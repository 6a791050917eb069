"""The LiteRT export: encoder.tflite and encoder.int8.tflite, run by ai-edge-litert."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SIZE, GRID, PARTS, APP_DIM, CHANNELS = 32, 8, 8, 4, 32  # tests/conftest.py tiny_config
NAMES = ["appearance", "features", "occurrence"]


def _pixels(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


def _paths(exported):
    ecfg, _ = exported
    root = os.path.join(ecfg.export_dir, "litert")
    return os.path.join(root, "encoder.tflite"), os.path.join(root, "encoder.int8.tflite")


def _training_pixels(trained, n):
    """The first n training images as 0..255 pixels: the parity images the export used."""
    from export import images

    cfg, _ = trained
    return ((images.training_images(cfg, n) + 1.0) * 127.5).astype(np.float32)


def _invoke(interp, x):
    """What a LiteRT caller does: resize the batch axis, allocate, set, invoke, read."""
    runner = interp.get_signature_runner("serving_default")
    index = runner.get_input_details()["images"]["index"]
    outputs = {k: d["index"] for k, d in runner.get_output_details().items()}
    del runner  # it holds the interpreter, which then refuses to reallocate
    interp.resize_tensor_input(index, list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(index, x)
    interp.invoke()
    return {k: interp.get_tensor(i) for k, i in outputs.items()}


@pytest.mark.parametrize("batch", [1, 7])
def test_float32_litert_matches_the_saved_model(exported, batch):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    ecfg, rep = exported
    path, _ = _paths(exported)
    interp = Interpreter(model_path=path, num_threads=2)
    (inp,) = interp.get_input_details()
    # Dynamic batch in the model, 1 until resize_tensor_input (docs/serving.md).
    assert inp["shape_signature"].tolist() == [-1, SIZE, SIZE, 3]
    assert inp["shape"].tolist() == [1, SIZE, SIZE, 3] and inp["dtype"] == np.float32
    assert interp.get_signature_list()["serving_default"] == {
        "inputs": ["images"],
        "outputs": NAMES,
    }

    x = _pixels(batch, seed=batch)
    got = _invoke(interp, x)
    saved = tf.saved_model.load(os.path.join(ecfg.export_dir, "saved_model", str(rep["version"])))
    want = saved.signatures["serving_default"](images=tf.constant(x))
    shapes = {
        "occurrence": (GRID, GRID, PARTS),
        "appearance": (PARTS, APP_DIM),
        "features": (CHANNELS,),
    }
    for k in NAMES:
        assert got[k].shape == (batch, *shapes[k]), k
        np.testing.assert_allclose(got[k], want[k].numpy(), rtol=0, atol=1e-4, err_msg=k)
    assert np.all((got["occurrence"] >= 0) & (got["occurrence"] <= 1))
    if batch > 1:
        assert np.ptp(got["features"], axis=0).max() > 1e-3


def test_report_records_the_litert_checks(exported):
    ecfg, rep = exported
    path, int8_path = _paths(exported)
    for name in ("litert_vs_keras", "litert_vs_saved_model", "litert_batch1_vs_batch"):
        diffs = rep["parity"][name]
        assert set(diffs) == set(NAMES) and max(diffs.values()) <= 1e-4, (name, diffs)
    assert rep["litert"]["inputs"]["images"] == {"dtype": "float32", "shape": [-1, SIZE, SIZE, 3]}
    assert rep["files"]["litert/encoder.tflite"] == os.path.getsize(path)
    assert rep["files"]["litert/encoder.int8.tflite"] == os.path.getsize(int8_path)
    assert {"litert/encoder.tflite", "litert/encoder.int8.tflite"} <= set(rep["sha256"])
    # Built-in ops only: the convolutions are LiteRT's own, nothing is Flex or custom.
    assert "CONV_2D" in rep["litert"]["ops"] and "CONV_2D" in rep["litert_int8"]["ops"]
    for ops in (rep["litert"]["ops"], rep["litert_int8"]["ops"]):
        assert not [op for op in ops if op.startswith(("Flex", "CUSTOM", "Custom"))], ops
    assert "QUANTIZE" in rep["litert_int8"]["ops"] and "DEQUANTIZE" in rep["litert_int8"]["ops"]
    assert rep["litert_int8"]["calibration_images"] == 32 and rep["litert_int8"]["written"]


def test_int8_litert_is_full_integer_with_float_io_and_close(trained, exported):
    from ai_edge_litert.interpreter import Interpreter

    path, int8_path = _paths(exported)
    assert os.path.getsize(int8_path) < 0.5 * os.path.getsize(path)
    interp = Interpreter(model_path=int8_path, num_threads=2)
    # The caller sends and gets float32; inside, the conv weights and activations are int8.
    assert interp.get_input_details()[0]["dtype"] == np.float32
    assert {d["dtype"] for d in interp.get_output_details()} == {np.float32}
    dtypes = [d["dtype"] for d in interp.get_tensor_details()]
    assert dtypes.count(np.int8) > dtypes.count(np.float32)

    x = _training_pixels(trained, 16)  # the parity images: not used for calibration
    got = _invoke(interp, x)
    ref = _invoke(Interpreter(model_path=path, num_threads=2), x)
    for k in NAMES:
        a, b = got[k].reshape(len(x), -1), ref[k].reshape(len(x), -1)
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.mean() >= 0.99, (k, cos.mean())
        # Close, not equal: an int8 model that matched float32 exactly would not be int8.
        assert 0 < np.abs(got[k] - ref[k]).max() < 0.5, k


def test_plain_litert_runtime_without_tensorflow_runs_the_models(exported):
    """A device with only ai-edge-litert: no TensorFlow import, default delegates."""
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
        for path in sys.argv[1:]:
            run = Interpreter(model_path=path).get_signature_runner()
            out = run(images=np.full((3, 32, 32, 3), 128.0, np.float32))
            print(path.rsplit("/", 1)[1], sorted(out), out["features"].shape, out["features"].std())
        assert "tensorflow" not in sys.modules
        """
    )
    path, int8_path = _paths(exported)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", code, path, int8_path], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ("encoder.tflite", "encoder.int8.tflite"), strict=True):
        assert line.startswith(f"{name} {NAMES} (3, {CHANNELS})"), line


def test_a_model_the_plain_runtime_cannot_load_is_refused():
    import tensorflow as tf

    from export import litert_export

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="images")])
    def custom(images):
        return {"features": tf.math.bessel_i1e(images)}  # no LiteRT kernel: a custom op

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="images")])
    def fixed(images):
        return {"features": images * 2.0}

    def convert(fn, **options):
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [fn.get_concrete_function()], tf.Module()
        )
        for k, v in options.items():
            setattr(converter, k, v)
        return converter.convert()

    with pytest.raises(litert_export.LiteRTCheckError, match="cannot load.*BesselI1e"):
        litert_export.describe(convert(custom, allow_custom_ops=True))
    with pytest.raises(litert_export.LiteRTCheckError, match="batch axis is fixed at 1"):
        litert_export.describe(convert(fixed))
