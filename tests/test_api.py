"""patchvae_tf.load(), encoder.keras under a user's head, strict restores and checked configs."""

import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def labelled(trained):
    """(pixels uint8 [512, 32, 32, 3], labels [512]) of the session model's training data."""
    from patchvae_tf import data

    cfg, _ = trained
    source = data.get_source(cfg.data, cfg.model.image_size, cfg.train.seed)
    batch = next(iter(data.input_dataset(source, "train", 512, training=False)))
    pixels = np.round((batch["image"].numpy() + 1.0) * 127.5).astype(np.uint8)
    return pixels, batch["label"].numpy()


@pytest.fixture(scope="module")
def pretrained(trained):
    import patchvae_tf

    return patchvae_tf.load(trained[0].train.workdir)


def test_load_encodes_as_the_saved_model_serves(trained, exported, labelled, tmp_path):
    import tensorflow as tf
    from PIL import Image

    import patchvae_tf

    cfg, _ = trained
    ecfg, rep = exported
    pixels = labelled[0][:40]
    model = patchvae_tf.load(cfg.train.workdir, batch_size=16)  # 3 chunks, the last short
    assert model.step == 300 and model.config.model == cfg.model
    codes = model.encode(pixels)
    assert {k: v.shape for k, v in codes.items()} == {
        "occurrence": (40, 8, 8, 8),
        "appearance": (40, 8, 4),
        "features": (40, 32),
    }
    served = tf.saved_model.load(os.path.join(ecfg.export_dir, "saved_model", str(rep["version"])))
    reference = served.signatures["serving_default"](images=tf.constant(pixels, tf.float32))
    for name, value in reference.items():
        np.testing.assert_allclose(codes[name], value.numpy(), atol=1e-5, rtol=0)
    # The export directory alone (no workdir, no data) gives the same codes.
    from_export = patchvae_tf.load(ecfg.export_dir)
    assert from_export.model is None and from_export.image_size == 32
    for name, value in from_export.encode(pixels).items():
        np.testing.assert_allclose(value, codes[name], atol=1e-5, rtol=0)
    # Files of another size and grey or RGBA arrays go through training's preprocessing:
    # a 64 x 64 nearest-neighbour enlargement encodes close to its 32 x 32 original.
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels[i]).resize((64, 64), Image.NEAREST).save(path)
        paths.append(str(path))
    from_files = model.encode(paths)
    from_generator = model.encode(p for p in paths)  # read batch_size at a time
    np.testing.assert_array_equal(from_generator["features"], from_files["features"])
    assert (
        np.abs(from_files["features"] - codes["features"][:3]).max()
        < 0.25 * np.abs(codes["features"][:3]).max()
    )
    grey = model.encode([pixels[0][..., :1], np.dstack([pixels[1], pixels[1][..., :1]])])
    assert grey["features"].shape == (2, 32)
    np.testing.assert_allclose(grey["features"][1], codes["features"][1], atol=1e-5)


def test_reconstruct_and_sample_from_a_workdir(trained, exported, labelled):
    import patchvae_tf

    cfg, _ = trained
    model = patchvae_tf.load(cfg.train.workdir)
    pixels = labelled[0][:16].astype(np.float32)
    recon = model.reconstruct(pixels)
    assert recon.shape == (16, 32, 32, 3) and recon.min() >= 0.0 and recon.max() <= 255.0
    own = np.mean((recon - pixels) ** 2)
    others = np.mean((recon - np.roll(pixels, 1, axis=0)) ** 2)
    assert own < 0.7 * others, (own, others)  # each reconstruction is of its own image
    np.testing.assert_array_equal(model.reconstruct(pixels), recon)  # seeded
    a, b = model.sample(5, seed=1), model.sample(5, seed=1)
    assert a.shape == (5, 32, 32, 3) and a.std() > 1.0
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="reconstruct needs the decoder: load a training"):
        patchvae_tf.load(exported[0].export_dir).reconstruct(pixels)
    with pytest.raises(ValueError, match="is neither a training workdir .* nor an export"):
        patchvae_tf.load(os.path.join(cfg.train.workdir, "checkpoints"))
    with pytest.raises(ValueError, match="is not a directory"):
        patchvae_tf.load(os.path.join(cfg.train.workdir, "config.json"))


@pytest.mark.parametrize(
    ("images", "needle"),
    [
        (np.zeros((32, 32, 3), np.uint8), "got an array of shape (32, 32, 3)"),
        (np.zeros((0, 32, 32, 3), np.uint8), "got an empty batch"),
        ([], "got an empty batch"),
        (iter([]), "got an empty batch"),
        (np.zeros((2, 32, 32, 2), np.uint8), "image 0 has shape (32, 32, 2)"),
        (np.zeros((2, 32, 32, 3), np.int32), "image 0 has dtype int32"),
        (np.full((1, 8, 8, 3), 300.0, np.float32), "image 0 has values in [300.0, 300.0]"),
        (np.full((1, 8, 8, 3), np.nan, np.float32), "image 0 has values in [nan, nan]"),
        (["/no/such/file.png"], "cannot read image file '/no/such/file.png'"),
        ("one.png", "got one path 'one.png'"),
        (7, "got a int"),
    ],
)
def test_encode_refuses_bad_input_with_one_value_error(pretrained, images, needle):
    with pytest.raises(ValueError) as err:
        pretrained.encode(images)
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert "expected" in message


def test_unreadable_file_is_named(pretrained, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read image file '.*notes.png'"):
        pretrained.encode([str(bad)])


def _other_architecture_workdir(trained, tmp_path):
    """A workdir whose config.json asks for 4 parts beside the session model's checkpoints."""
    cfg, _ = trained
    workdir = tmp_path / "renamed"
    shutil.copytree(os.path.join(cfg.train.workdir, "checkpoints"), workdir / "checkpoints")
    # Without training's record of its config (a workdir written before it existed), so the
    # strict restore is what refuses it; with it, load_config names the edit first.
    (workdir / "checkpoints" / "trained_config.json").unlink()
    other = cfg.replace(
        model=dataclasses.replace(cfg.model, num_parts=4),
        train=dataclasses.replace(cfg.train, workdir=str(workdir)),
    )
    (workdir / "config.json").write_text(other.to_json())
    return other


def test_restore_of_another_architecture_is_refused_everywhere(trained, tmp_path):
    import patchvae_tf
    from patchvae_tf import restore
    from patchvae_tf.evaluation import restore_model
    from patchvae_tf.model import models

    other = _other_architecture_workdir(trained, tmp_path)
    workdir = other.train.workdir
    expected = (
        rf"checkpoint '.*ckpt-300' of workdir '{workdir}' does not fit the model: "
        r"model/heads/mean/_kernel has shape \[3, 3, 32, 16\] there \[3, 3, 32, 32\]"
    )
    with pytest.raises(restore.CheckpointMismatch, match=expected):
        restore_model(other)
    with pytest.raises(ValueError, match=expected):
        patchvae_tf.load(workdir)
    # A layer the checkpoint never saw (a VAE's posterior head) is named too.
    vae = models.build_model(dataclasses.replace(trained[0].model, arch="vae"))
    path = os.path.join(workdir, "checkpoints", "ckpt-300")
    with pytest.raises(restore.CheckpointMismatch, match="model/posterior_mean/_kernel is not in"):
        restore.restore(path, workdir, model=vae)
    # Through the command line: one line, exit status 2, nothing written.
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "evaluate.py"), f"--workdir={workdir}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: checkpoint") and f"of workdir '{workdir}'" in last
    assert "model/heads/mean/_kernel" in last and "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(workdir, "eval"))


_HEAD = r"""
import sys

import keras
import numpy as np

import patchvae_tf.model  # registers the layers: nothing else of the repository is importable here

assert patchvae_tf.__file__.startswith(sys.argv[3]), patchvae_tf.__file__
path, arrays = sys.argv[1], np.load(sys.argv[2])
encoder = keras.saving.load_model(path)
out = encoder(arrays["served_pixels"].astype("float32"))
worst = max(float(np.abs(np.asarray(out[k]) - arrays["served_" + k]).max()) for k in out)
keras.utils.set_random_seed(0)
images = keras.Input((32, 32, 3))
logits = keras.layers.Dense(3)(encoder(images)["features"])
classifier = keras.Model(images, logits)
classifier.compile(
    keras.optimizers.Adam(3e-3),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
x, y = arrays["pixels"].astype("float32"), arrays["labels"]
history = classifier.fit(x[:384], y[:384], batch_size=32, epochs=25, verbose=0)
test = classifier.evaluate(x[384:], y[384:], verbose=0, return_dict=True)
loss = history.history["loss"]
print(f"RESULT {worst} {loss[0]} {loss[-1]} {test['accuracy']}")
"""


def test_installed_package_loads_encoder_keras_and_trains_it_under_a_new_head(
    exported, labelled, tmp_path
):
    import tensorflow as tf

    ecfg, rep = exported
    path = os.path.join(ecfg.export_dir, "keras", "encoder.keras")
    assert rep["files"]["keras/encoder.keras"] == os.path.getsize(path)
    assert max(rep["parity"]["keras_file_vs_keras"].values()) <= 1e-5
    pixels, labels = labelled
    served = tf.saved_model.load(os.path.join(ecfg.export_dir, "saved_model", str(rep["version"])))
    out = served.signatures["serving_default"](images=tf.constant(pixels[:8], tf.float32))
    arrays = tmp_path / "arrays.npz"
    np.savez(
        arrays,
        pixels=pixels,
        labels=labels,
        served_pixels=pixels[:8],
        **{f"served_{k}": v.numpy() for k, v in out.items()},
    )
    script = tmp_path / "head.py"
    script.write_text(_HEAD)
    # pip install of a copy of the clone (the build writes build/ and *.egg-info beside its
    # sources), then run from an empty directory with only what pip installed on the path.
    clone, site = tmp_path / "clone", tmp_path / "site"
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        os.makedirs(clone, exist_ok=True)
        shutil.copy(os.path.join(ROOT, name), clone)
    for name in ("patchvae_tf", "configs"):
        shutil.copytree(
            os.path.join(ROOT, name), clone / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(clone)], check=True, capture_output=True)
    assert (site / "patchvae_tf" / "configs" / "eval" / "shapes.cfg").is_file()
    for command in ("train", "evaluate"):
        script_text = (site / "bin" / f"patchvae-{command}").read_text()
        assert f"from patchvae_tf.commands import {command}" in script_text
    env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, str(script), path, str(arrays), str(site)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT")][-1]
    print(line)  # the figures docs/api.md quotes
    worst, first, last, accuracy = (float(v) for v in line.split()[1:])
    assert worst <= 1e-5  # the file gives what the SavedModel serves
    assert last < 0.7 * first, (first, last)
    majority = np.bincount(labels[384:]).max() / len(labels[384:])
    assert accuracy > majority + 0.05, (accuracy, majority)  # measured 0.727 against 0.594


def test_docs_api_md_runs_as_written(trained, exported, tmp_path, monkeypatch):
    """Every python block of docs/api.md, in order, against the session model and its export."""
    import re

    with open(os.path.join(ROOT, "docs", "api.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert len(blocks) >= 3
    code = "\n".join(blocks)
    assert 'patchvae_tf.load("runs/shapes")' in code and "exports/shapes/keras" in code
    code = code.replace("runs/shapes", trained[0].train.workdir)
    code = code.replace("exports/shapes", exported[0].export_dir)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102
    assert namespace["codes"]["features"].shape == (4, 32)
    assert namespace["reconstructions"].shape == (4, 32, 32, 3)
    assert namespace["classifier"].count_params() == namespace["encoder"].count_params() + 99
    # The training section trained in the test's directory, on the data it made.
    assert namespace["mine"].step == 10 and namespace["mine"].config.data.dataset == (
        "python:dataset"
    )
    assert namespace["my_codes"]["occurrence"].shape == (4, 8, 8, 8)
    assert os.path.isdir(tmp_path / "runs" / "my_images" / "checkpoints")
    assert namespace["on_resnet"].outputs["features"] == [None, 256]
    assert namespace["on_resnet"].config.model.encoder.startswith("keras.Model:")
    history = namespace["early"].history
    assert namespace["stopped"].step == history[-1][0] < 2000
    assert history[-1][1]["loss"] < 0.75 * history[0][1]["loss"] <= history[-2][1]["loss"]


def test_load_works_on_every_directory_docs_api_md_names(trained, exported):
    import patchvae_tf

    cfg, _ = trained
    ecfg, rep = exported
    version_dir = os.path.join(ecfg.export_dir, "saved_model", str(rep["version"]))
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    want = patchvae_tf.load(cfg.train.workdir).encode(images)["features"]
    for path in (ecfg.export_dir, version_dir):
        model = patchvae_tf.load(path)
        assert model.image_size == 32 and model.step == rep["step"], path
        np.testing.assert_allclose(model.encode(images)["features"], want, atol=1e-4)
