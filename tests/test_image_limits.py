"""Encoded images are held to a pixel, aspect and count limit from their header, everywhere."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT

from patchvae_tf.data import image_limits


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + body))
    return struct.pack(">I", len(body)) + kind + body + crc


def forged_png(width: int, height: int) -> bytes:
    """A PNG whose header promises width x height RGB pixels, with one row of data: a
    decoder that trusts the header allocates it all before it finds the data short.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + 3 * min(width, 64)))
    return (
        image_limits.PNG_MAGIC + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", row) + _chunk(b"IEND", b"")
    )


def real_png(width: int, height: int, colour: int = 2) -> bytes:
    """A whole PNG of zeros (decodable), width x height."""
    channels = {0: 1, 2: 3}[colour]
    data = zlib.compress((b"\0" * (1 + width * channels)) * height)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        image_limits.PNG_MAGIC
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def forged_jpeg(width: int, height: int) -> bytes:
    """A real 16 x 8 JPEG (with an EXIF-like APP1 segment before its frame) whose SOF
    header is rewritten to width x height.
    """
    blob = bytearray(tf.io.encode_jpeg(tf.zeros([8, 16, 3], tf.uint8)).numpy())
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 300) + b"x" * 300
    blob = blob[:2] + app1 + blob[2:]
    sof = blob.index(b"\xff\xc0")
    blob[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(blob)


def test_header_sizes_in_python_and_in_the_graph_agree():
    jpeg = tf.io.encode_jpeg(tf.zeros([30, 50, 3], tf.uint8)).numpy()
    cases = {
        "png": (forged_png(20_000, 30_000), (20_000, 30_000)),
        "jpeg": (forged_jpeg(60_000, 40_000), (60_000, 40_000)),
        "real_jpeg": (jpeg, (50, 30)),
        "real_png": (real_png(7, 5), (7, 5)),
    }
    for name, (blob, (width, height)) in cases.items():
        assert image_limits.header_size(io.BytesIO(blob))[:2] == (width, height), name
        in_graph = image_limits.tf_header_size(tf.constant(blob)).numpy().tolist()
        assert in_graph == [height, width], name
    for blob in (b"GIF89a" + b"\0" * 30, b"BM" + b"\0" * 60, b"RIFF\0\0\0\0WEBPVP8 "):
        with pytest.raises(image_limits.ImageRefused, match="not a JPEG or PNG"):
            image_limits.header_size(io.BytesIO(blob))
        with pytest.raises(tf.errors.InvalidArgumentError, match="must hold JPEG or PNG"):
            image_limits.tf_header_size(tf.constant(blob))
    with pytest.raises(image_limits.ImageRefused, match="IHDR"):
        image_limits.header_size(io.BytesIO(forged_png(5, 5)[:20]))


def test_limits_name_the_size_and_the_limit():
    limits = image_limits.ImageLimits(max_pixels=1000, max_aspect=4.0)
    assert limits.fits(40, 25) and limits.fits(10, 40)
    assert not limits.fits(41, 25)  # 1025 pixels
    assert not limits.fits(5, 21)  # long side 4.2 times the short one
    assert not limits.fits(0, 5)
    message = limits.refusal(41, 25)
    assert message.startswith("an image of 41 x 25 pixels") and "limit of 1000 pixels" in message
    assert "at most 4 times" in message and limits.refusal(40, 25) == ""
    with pytest.raises(image_limits.ImageTooLarge, match="20000 x 30000"):
        image_limits.check_header(io.BytesIO(forged_png(20_000, 30_000)))
    # The graph says the same sentence.
    with pytest.raises(tf.errors.InvalidArgumentError, match="the input: an image of 41 x 25"):
        image_limits.tf_check_size(tf.constant(25), tf.constant(41), limits)
    image_limits.tf_check_size(tf.constant(25), tf.constant(40), limits)
    for bad in ({"max_pixels": 0}, {"max_aspect": 0.5}, {"max_images": 1.5}):
        with pytest.raises(ValueError, match="Received"):
            image_limits.ImageLimits(**bad)


@pytest.fixture(scope="module")
def loaded(exported):
    ecfg, rep = exported
    return tf.saved_model.load(os.path.join(ecfg.export_dir, "saved_model", str(rep["version"])))


def test_serving_refuses_bombs_strips_and_crowds_before_decoding(exported, loaded):
    _, rep = exported
    limits = rep["input"]["limits"]
    assert limits == image_limits.DEFAULT.to_dict()
    serve = loaded.signatures["serve_image_bytes"]
    cases = [
        ([forged_png(20_000, 20_000)], "an image of 20000 x 20000 pixels"),
        ([forged_jpeg(30_000, 30_000)], "an image of 30000 x 30000 pixels"),
        ([real_png(100_000, 1)], "an image of 100000 x 1 pixels"),  # 373 bytes
        ([real_png(8, 8)] * (limits["max_images"] + 1), "holds 129 images; send 1 to 128"),
        ([b"GIF89a" + b"\0" * 30], "must hold JPEG or PNG"),
    ]
    for blobs, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(image_bytes=tf.constant(blobs))
    # Within the limits (a 2:1 image, and 16:1, the aspect limit) images are encoded.
    out = serve(image_bytes=tf.constant([real_png(64, 32), real_png(512, 32)]))
    assert out["features"].shape[0] == 2 and np.all(np.isfinite(out["features"]))


def test_encode_holds_files_bytes_and_arrays_to_the_export_limits(exported, tmp_path):
    import patchvae_tf

    ecfg, _ = exported
    model = patchvae_tf.load(ecfg.export_dir)
    assert model.limits == image_limits.DEFAULT
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(forged_png(20_000, 20_000))
    strip = tmp_path / "strip.png"
    strip.write_bytes(real_png(100_000, 1))
    gif = tmp_path / "a.png"  # a GIF under a PNG name: refused as serving refuses it
    gif.write_bytes(b"GIF89a" + b"\0" * 30)
    for item, message in [
        (str(bomb), "bomb.png': an image of 20000 x 20000 pixels"),
        (str(strip), "an image of 100000 x 1 pixels"),
        (str(gif), "not a JPEG or PNG"),
        (forged_png(20_000, 20_000), "image 0: an image of 20000 x 20000"),
        (np.zeros((1, 300, 3), np.uint8), "image 0: an image of 300 x 1 pixels"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.encode([item])
    png = real_png(40, 32)
    from_bytes = model.encode([png])["features"]
    from_array = model.encode([np.zeros((32, 40, 3), np.uint8)])["features"]
    np.testing.assert_allclose(from_bytes, from_array, atol=1e-6)


def test_folder_pipeline_skips_images_past_the_limits(tmp_path, capsys):
    from patchvae_tf import data
    from patchvae_tf.config import DataConfig

    root = tmp_path / "folder" / "train" / "a"
    root.mkdir(parents=True)
    (root / "bomb.png").write_bytes(forged_png(20_000, 20_000))
    (root / "strip.png").write_bytes(real_png(1000, 2))
    (root / "ok.png").write_bytes(real_png(40, 30))
    source = data.get_source(DataConfig(dataset=f"folder:{tmp_path / 'folder'}"), 16)
    out = capsys.readouterr().out
    assert source.sizes["train"] == 1 and source.skipped == 2
    assert "skipped 2 image(s) in the train split" in out and "max_image_pixels" in out
    # A tighter limit (--max_image_pixels) leaves nothing: one line says so.
    from patchvae_tf.errors import UserError

    with pytest.raises(UserError, match="every training image is corrupt or past the size"):
        data.get_source(
            DataConfig(dataset=f"folder:{tmp_path / 'folder'}", max_image_pixels=1000), 16
        )


def test_tfds_images_past_the_limit_are_dropped_undecoded(tiny_tfds):
    from conftest import TINY_TFDS

    from patchvae_tf import data
    from patchvae_tf.config import DataConfig

    def count(**kw):
        cfg = DataConfig(dataset=TINY_TFDS, data_dir=tiny_tfds, **kw)
        source = data.get_source(cfg, 8)
        test = data.input_dataset(source, "test", 8, training=False)
        return sum(int(b["image"].shape[0]) for b in test)

    assert count() == 5
    assert count(max_image_pixels=63) == 0  # its images are 8 x 8
    # The training stream reads its images through the same check.
    cfg = DataConfig(dataset=TINY_TFDS, data_dir=tiny_tfds)
    train = data.input_dataset(data.get_source(cfg, 8), "train", 4, training=True)
    assert next(iter(train))["image"].shape == (4, 8, 8, 3)


def test_training_stops_in_one_line_where_no_tfds_image_fits(tiny_tfds, tmp_path):
    """The training stream repeats forever: with every image past the limits it would spin
    without a word. It stops once two epochs' worth of images in a row (74) are dropped.
    """
    import dataclasses

    import tensorflow as tf
    from conftest import TINY_TFDS, small_config

    from patchvae_tf import data
    from patchvae_tf.config import DataConfig
    from patchvae_tf.errors import UserError
    from patchvae_tf.training import train

    cfg = DataConfig(dataset=TINY_TFDS, data_dir=tiny_tfds, max_image_pixels=63)
    stream = data.input_dataset(data.get_source(cfg, 8), "train", 4, training=True)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="two epochs, 74 images, in a row past"
    ):
        next(iter(stream))
    run = small_config(tmp_path / "w", batch=4)
    run = run.replace(data=cfg, model=dataclasses.replace(run.model, image_size=8))
    expected = (
        f"TFDS dataset '{TINY_TFDS}': no image of the training split fits "
        "--max_image_pixels=63 and --max_image_aspect=16 "
        "(two epochs, 74 images, in a row past them)"
    )
    with pytest.raises(UserError) as caught:
        train(run)
    assert str(caught.value) == expected


@pytest.mark.slow
def test_each_bomb_stays_under_1_5_gb_in_one_process(exported):
    """The whole process's peak (ru_maxrss) for the largest bomb, through serving and encode."""
    ecfg, rep = exported
    # The shared export's own version: other tests publish later versions beside it.
    version = str(rep["version"])
    for target in ("serving", "encode"):
        proc = subprocess.run(
            [sys.executable, "-c", _BOMB_WORKER, target, ecfg.export_dir, version],
            capture_output=True, text=True, cwd=ROOT, timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["result"].startswith("refused") and "20000 x 20000" in result["result"]
        assert result["peak_mb"] < 1536, result


_BOMB_WORKER = """
import json, os, sys, tempfile
from benchmarks import image_bombs
target, export_dir, version = sys.argv[1:]
tmp = tempfile.mkdtemp()
bomb, valid = os.path.join(tmp, "bomb.png"), os.path.join(tmp, "valid.png")
image_bombs.write_png(bomb, 20000, 20000, 0)
image_bombs.write_png(valid, 48, 40, 2)
print(json.dumps(image_bombs._worker(target, export_dir, [bomb], valid, version)))
"""


def test_uint8_signature_resizes_as_training_and_keeps_the_limits(exported, loaded):
    from patchvae_tf import data

    _, rep = exported
    for key in ("image_tensor_vs_images", "image_tensor_vs_image_bytes_resized"):
        assert max(rep["parity"][key].values()) <= 1e-4, key
    serve = loaded.signatures["serve_image_tensor"]
    default = loaded.signatures["serving_default"]
    x = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    got = serve(image_tensor=tf.constant(x))["features"].numpy()
    # Training's preprocessing (shorter side to 32 with antialiasing, centre crop), then
    # serving_default on its pixels.
    trained = np.stack([(data.preprocess_image(i, 32).numpy() + 1.0) * 127.5 for i in x])
    want = default(images=tf.constant(trained, tf.float32))["features"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    # The comparison can fail: a plain squash to 32 x 32 gives other features.
    squashed = tf.image.resize(tf.cast(x, tf.float32), [32, 32])
    other = default(images=squashed)["features"].numpy()
    assert np.max(np.abs(other - got)) > 1e-3
    cases = [
        (np.zeros((1, 1, 200, 3), np.uint8), "`image_tensor`: an image of 200 x 1 pixels"),
        (np.zeros((129, 8, 8, 3), np.uint8), "holds 129 images; send 1 to 128"),
        (np.zeros((0, 8, 8, 3), np.uint8), "`image_tensor` is an empty batch"),
        (np.zeros((8, 8, 3), np.uint8), r"expected shape \[\?,\?,\?,3\]"),
        (np.zeros((1, 8, 8, 4), np.uint8), r"expected shape \[\?,\?,\?,3\]"),
    ]
    for images, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(image_tensor=tf.constant(images))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serve(image_tensor=tf.zeros([1, 8, 8, 3], tf.float32))
