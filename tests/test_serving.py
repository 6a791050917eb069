"""The SavedModel as TF Serving runs it: its signatures, refusals and batching file."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import APP_DIM, CHANNELS, GRID, PARTS, SIZE, bare_env, random_pixels, version_dir


def test_session_loader_runs_the_saved_model_as_tf_serving_does(exported):
    """TF Serving (and saved_model_cli run) load a SavedModel into a TF1 session: restore
    the variables by the saver, then run the signature's tensors. A model whose functions
    read variables the saver does not restore loads in TF2 and fails there.
    """
    import tensorflow as tf

    ecfg, rep = exported
    x = random_pixels(3, seed=4)
    want = tf.saved_model.load(version_dir(ecfg, rep)).signatures["serving_default"](
        images=tf.constant(x)
    )
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir(ecfg, rep))
        sig = meta.signature_def["serving_default"]
        got = sess.run({k: v.name for k, v in sig.outputs.items()}, {sig.inputs["images"].name: x})
    assert sorted(got) == sorted(want) == ["appearance", "features", "occurrence"]
    for k, v in got.items():
        np.testing.assert_allclose(v, want[k].numpy(), atol=1e-5, err_msg=k)


def test_saved_model_holds_the_encoder_only(exported):
    import tensorflow as tf

    ecfg, rep = exported
    keys = [k for k, _ in tf.train.list_variables(f"{version_dir(ecfg, rep)}/variables/variables")]
    weights = [k for k in keys if "VARIABLE_VALUE" in k]
    # The pyramid encoder's two convs (no biases) and one BatchNorm (4), three heads (6).
    assert len(weights) == rep["model"]["encoder_variables"] == 12
    assert not [k for k in keys if "decoder" in k]
    assert any("moving_mean" in k for k in weights)  # BatchNorm statistics are exported


@pytest.mark.slow
def test_fresh_process_without_our_code_serves_both_signatures(exported, tmp_path):
    ecfg, rep = exported
    script = textwrap.dedent(
        """
        import io, json, sys
        import numpy as np
        import tensorflow as tf
        m = tf.saved_model.load(sys.argv[1])
        rng = np.random.default_rng(1)
        pixels = rng.uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
        a = m.signatures["serving_default"](images=tf.constant(pixels))
        big = tf.cast(rng.uniform(0, 255, (50, 40, 3)), tf.uint8)
        grey = tf.cast(rng.uniform(0, 255, (20, 33, 1)), tf.uint8)
        blobs = tf.stack([tf.io.encode_jpeg(big), tf.io.encode_png(grey)])
        b = m.signatures["serve_image_bytes"](image_bytes=blobs)
        ours = [n for n in sys.modules if n.split(".")[0] in ("patchvae_tf", "export")]
        print(json.dumps({
            "default": {k: v.shape.as_list() for k, v in a.items()},
            "bytes": {k: v.shape.as_list() for k, v in b.items()},
            "finite": bool(all(np.isfinite(v.numpy()).all() for v in [*a.values(), *b.values()])),
            "ours": ours,
        }))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, version_dir(ecfg, rep)],
        cwd=tmp_path,  # not the repo: our packages are not importable from here
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ours"] == [] and got["finite"]
    assert got["default"] == {
        "occurrence": [3, GRID, GRID, PARTS],
        "appearance": [3, PARTS, APP_DIM],
        "features": [3, CHANNELS],
    }
    assert got["bytes"] == {
        "occurrence": [2, GRID, GRID, PARTS],
        "appearance": [2, PARTS, APP_DIM],
        "features": [2, CHANNELS],
    }


@pytest.mark.slow
def test_saved_model_cli_lists_both_signatures(exported):
    ecfg, rep = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run(
        [cli, "show", "--all", "--dir", version_dir(ecfg, rep)],
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for text in (
        "signature_def['serving_default']",
        "signature_def['serve_image_bytes']",
        "inputs['images']",
        "inputs['image_bytes']",
        "outputs['occurrence']",
        "outputs['appearance']",
        "outputs['features']",
        f"shape: (-1, {GRID}, {GRID}, {PARTS})",
    ):
        assert text in out, text


def test_bad_inputs_raise_invalid_argument(loaded):
    import tensorflow as tf

    default = loaded.signatures["serving_default"]
    from_bytes = loaded.signatures["serve_image_bytes"]
    xla = loaded.signatures["serving_xla"]
    expected_shape = r"expected shape \[\?,32,32,3\]"
    cases = [
        (default, {"images": np.zeros((SIZE, SIZE, 3), np.float32)}, expected_shape),
        (default, {"images": np.zeros((1, 31, SIZE, 3), np.float32)}, expected_shape),
        (default, {"images": np.zeros((1, SIZE, SIZE, 4), np.float32)}, expected_shape),
        (default, {"images": -np.ones((1, SIZE, SIZE, 3), np.float32)}, "in \\[0, 255\\]"),
        (default, {"images": np.full((1, SIZE, SIZE, 3), np.nan, np.float32)}, "in \\[0, 255\\]"),
        # The XLA signature checks as serving_default does: XLA would drop Assert ops.
        (xla, {"images": np.zeros((1, 31, SIZE, 3), np.float32)}, expected_shape),
        (xla, {"images": np.full((1, SIZE, SIZE, 3), 256.0, np.float32)}, "above 255"),
        (xla, {"images": np.full((1, SIZE, SIZE, 3), np.inf, np.float32)}, "in \\[0, 255\\]"),
        (xla, {"images": np.zeros((0, SIZE, SIZE, 3), np.float32)}, "empty batch"),
        (from_bytes, {"image_bytes": np.array([b"not an image at all"])}, "JPEG or PNG"),
        (from_bytes, {"image_bytes": np.array(b"x")}, "string \\[batch\\]"),
    ]
    for fn, kwargs, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            fn(**{k: tf.constant(v) for k, v in kwargs.items()})
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        default(images=tf.zeros([1, SIZE, SIZE, 3], tf.int32))  # a wrong dtype
    # An empty batch: a message, not a convolution's error about filter depths.
    with pytest.raises(tf.errors.InvalidArgumentError, match="`images` is an empty batch"):
        default(images=tf.zeros([0, SIZE, SIZE, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="`image_bytes` is an empty batch"):
        from_bytes(image_bytes=tf.zeros([0], tf.string))
    png = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()
    with pytest.raises(tf.errors.InvalidArgumentError):  # a PNG header on a broken file
        from_bytes(image_bytes=tf.constant([png[:40]]))


def test_batching_parameters_follow_the_measured_throughput(exported):
    from export import batching

    ecfg, rep = exported
    with open(os.path.join(ecfg.export_dir, "batching_parameters.txt")) as f:
        text = f.read()
    b = rep["batching"]
    rates = {int(k): v for k, v in b["images_per_second"].items()}
    assert sorted(rates) == [1, 8, 32, 128] and all(v > 0 for v in rates.values())
    assert b == {"images_per_second": b["images_per_second"], **batching.parameters(rates)}
    # The file says what the report says, in TF Serving's text format.
    for key in ("max_batch_size", "batch_timeout_micros", "num_batch_threads"):
        assert f"{key} {{ value: {b[key]} }}" in text, key
    sizes = [int(line.split(":")[1]) for line in text.splitlines() if line.startswith("allowed")]
    assert sizes == b["allowed_batch_sizes"] and sizes[-1] == b["max_batch_size"]


def test_batching_rule_stops_where_throughput_stops_growing():
    from export import batching

    p = batching.parameters({1: 500.0, 8: 2000.0, 32: 2900.0, 128: 3000.0}, cores=2)
    assert p["max_batch_size"] == 32 and p["allowed_batch_sizes"] == [1, 8, 32]
    assert p["batch_timeout_micros"] == 2000 and p["num_batch_threads"] == 2
    p = batching.parameters({1: 500.0, 8: 900.0, 32: 1500.0, 128: 3000.0}, cores=2)
    assert p["max_batch_size"] == 128
    with pytest.raises(ValueError, match="batch 1"):
        batching.parameters({8: 1.0})
