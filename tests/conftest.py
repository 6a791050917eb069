"""Shared fixtures and helpers: one tiny PatchVAE trained once per test session, its export
and recognizer, the repository's root, and the small configs, data and commands several test
files use.
"""

import dataclasses
import os
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The checkout: where train.py, configs/ and docs/ are.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from patchvae_tf.config import (  # noqa: E402
    Config,
    DataConfig,
    DistributeConfig,
    ModelConfig,
    TrainConfig,
)  # noqa: E402


def tiny_config(workdir: str, **train) -> Config:
    """A model and data small enough to train in seconds on 2 CPU cores."""
    return Config(
        data=DataConfig(dataset="shapes", shapes_train_size=2048, shapes_test_size=256),
        # beta_occ=1 (configs/shapes.cfg: 0.1 with categorical occurrences): at 10 a run this
        # short keeps parts at the prior.
        model=ModelConfig(
            encoder="pyramid",
            image_size=32,
            base_channels=16,
            scale=4,
            num_parts=8,
            appearance_dim=4,
            beta_occ=1.0,
            # configs/shapes.cfg's schedule, initialization and constants.
            anneal_rate=1e-3,
            anneal_schedule="exponential",
            initialization="glorot",
            batch_norm_momentum=0.99,
            batch_norm_epsilon=1e-3,
        ),
        train=TrainConfig(
            workdir=workdir,
            batch_size=32,
            learning_rate=1e-3,
            adam_epsilon=1e-7,
            **{"train_steps": 300, "log_every": 100, "checkpoint_every": 100, **train},
        ),
        # float32 whatever the host: --mixed_precision=auto would pick bfloat16 on CPUs with
        # AVX512_BF16 or AMX, and the tests compare numbers.
        distribute=DistributeConfig(mixed_precision="none"),
    )


def small_config(workdir, steps=4, batch=16, **distribute) -> Config:
    """tiny_config smaller still: each TensorFlow subprocess spends its time starting up."""
    cfg = tiny_config(str(workdir), train_steps=steps, log_every=1000, checkpoint_every=1000)
    return cfg.replace(
        data=dataclasses.replace(cfg.data, shapes_train_size=256, shapes_test_size=16),
        model=dataclasses.replace(cfg.model, base_channels=8, num_parts=4, appearance_dim=2),
        train=dataclasses.replace(cfg.train, batch_size=batch),
        # float32 whatever the host, as in tiny_config: --mixed_precision=auto would train
        # these in bfloat16 on CPUs with AVX512_BF16, and the tests compare numbers.
        distribute=DistributeConfig(
            **{"jit_compile": False, "mixed_precision": "none", **distribute}
        ),
    )


# evaluate.py's settings small enough for 2 shared cores: the probes see 256 images per split.
EVAL_FAST = dict(
    eval_examples=256,
    batch_size=64,
    probe_steps=200,
    finetune_epochs=2,
    finetune_batch_size=128,
    finetune_lr_step_epochs=1,
    freeze_stages=(-1,),
    gallery_size=5,
)


def copy_workdir(cfg, dest) -> str:
    """A private copy of cfg's workdir under dest, so tests writing eval/ do not collide."""
    workdir = str(dest / "workdir")
    shutil.copytree(cfg.train.workdir, workdir, ignore=shutil.ignore_patterns("eval", ".eval-*"))
    return workdir


def run_train(args, cwd=ROOT) -> subprocess.CompletedProcess:
    """python train.py ARGS in a child process, its output captured as text."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def library_worker(cfg_path, mode: str, **env) -> subprocess.Popen:
    """tests/library_worker.py training the config JSON at cfg_path by patchvae_tf.train in a
    child process; mode: what it runs (its second argument). Output: stdout, with stderr.
    """
    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    worker = os.path.join(ROOT, "tests", "library_worker.py")
    return subprocess.Popen(
        [sys.executable, worker, str(cfg_path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**base, "PYTHONPATH": ROOT, **env},
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(config, summary) of a tiny PatchVAE trained on shapes; shared by every test."""
    from patchvae_tf import training

    cfg = tiny_config(str(tmp_path_factory.mktemp("trained") / "workdir"))
    summary = training.train(cfg)
    return cfg, summary


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """(ExportConfig, report) of one export of the session's tiny PatchVAE: SavedModel, ONNX
    and LiteRT, each with its int8 model, and encoder.keras. Shared by every test of an export.
    """
    from export import exporter
    from patchvae_tf.config import ExportConfig

    cfg, _ = trained
    ecfg = ExportConfig(
        workdir=cfg.train.workdir,
        export_dir=str(tmp_path_factory.mktemp("export") / "patchvae"),
        formats=("saved_model", "onnx", "litert", "keras"),
        quantize="int8",
        parity_images=16,
        calibration_images=32,
    )
    return ecfg, exporter.export(ecfg)


TINY_TFDS = "patchvae_tiny_images"  # a name no TFDS release uses


@pytest.fixture(scope="session")
def tiny_tfds(tmp_path_factory):
    """A prepared TFDS dataset written here without the network: 37 distinct random 8x8 RGB
    training images (3 classes) and 5 test images. Returns its --data_dir; TFDS reads it back
    by name from there without this builder class.
    """
    import numpy as np
    import tensorflow_datasets as tfds

    class PatchvaeTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            )
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(37, 0), "test": self._generate_examples(5, 1)}

        def _generate_examples(self, count, seed):
            rng = np.random.default_rng(seed)
            for i in range(count):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                yield i, {"image": pixels, "label": i % 3}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    PatchvaeTinyImages(data_dir=data_dir).download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory):
    """A labelled image folder the tests write: 100 training and 50 test PNGs per class of
    textured shapes labelled by the largest one, in circle/, square/ and triangle/ (balanced:
    the majority label scores 1/3). Returns its path.
    """
    from patchvae_tf.data.shapes_folder import write_folder

    root = str(tmp_path_factory.mktemp("labelled") / "shapes")
    write_folder(root, 100, 50, seed=7, texture=True, label="largest")
    return root


@pytest.fixture(scope="session")
def recognizer(trained, shapes_folder, tmp_path_factory):
    """(RecognizerConfig, results) of a recognizer trained on the tiny PatchVAE from 20 labels
    per class of shapes_folder (a linear head on its standardised features), a fifth of them
    held out to pick the best epoch. Shared by the recognition tests.
    """
    from patchvae_tf.config import RecognizerConfig
    from patchvae_tf.recognition import recognizer as rec

    cfg, _ = trained
    rcfg = RecognizerConfig(
        encoder_workdir=cfg.train.workdir,
        workdir=str(tmp_path_factory.mktemp("recognizer") / "workdir"),
        dataset=f"folder:{shapes_folder}",
        labels_per_class=20,
        validation_share=0.2,
        classifier_head="linear",
        epochs=40,
        lr_step_epochs=20,
        learning_rate=0.05,
        checkpoint_every=20,
    )
    return rcfg, rec.train(rcfg)


@pytest.fixture(scope="session")
def recognizer_export(recognizer, tmp_path_factory):
    """(ExportConfig, report) of the session recognizer's export: SavedModel, ONNX and LiteRT,
    each with its int8 model.
    """
    from export import recognizer_export as rx
    from patchvae_tf.config import ExportConfig

    rcfg, _ = recognizer
    ecfg = ExportConfig(
        workdir=rcfg.workdir,
        export_dir=str(tmp_path_factory.mktemp("recognizer_export") / "recognizer"),
        formats=("saved_model", "onnx", "litert"),
        quantize="int8",
        calibration_images=32,
    )
    return ecfg, rx.export(ecfg)


# The session model's sizes (tiny_config): image, grid (scale 4), parts N, appearance L and
# the encoder's width.
SIZE = 32
GRID, PARTS, APP_DIM, CHANNELS = 8, 8, 4, 32


def version_dir(ecfg, rep) -> str:
    """The SavedModel version directory an export report names."""
    return os.path.join(ecfg.export_dir, "saved_model", str(rep["version"]))


# Odd-sized uint8 images [13, 20, 28, 3] for patchvae_tf.train(): 13 ends an epoch mid-batch.
PIXELS = np.random.default_rng(7).integers(0, 256, size=(13, 20, 28, 3), dtype=np.uint8)


def random_pixels(n: int, seed: int = 0):
    """n random images [n, SIZE, SIZE, 3] in [0, 255], float32."""
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


def bare_env() -> dict:
    """The environment of a child process that must not import this checkout's code."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}


@pytest.fixture(scope="session")
def loaded(exported):
    """The shared export's SavedModel, loaded as TF Serving loads it."""
    import tensorflow as tf

    ecfg, rep = exported
    return tf.saved_model.load(version_dir(ecfg, rep))
