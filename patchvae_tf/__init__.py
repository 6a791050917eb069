"""PatchVAE in TensorFlow 2 / Keras 3 / TensorFlow Probability.

``patchvae_tf.train(config, data)`` trains on data passed from Python and
``patchvae_tf.load(path)`` opens a training workdir or an export directory (docs/api.md);
its public names load on first use, so the commands check their flags before TensorFlow loads.
``import patchvae_tf.model`` registers the layers and models for Keras serialization, so
``keras.saving.load_model("encoder.keras")`` opens an exported encoder.
"""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) drowns real
# messages in a CLI; warnings and errors still show at level 1.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow turns its oneDNN kernels on only for CPUs with AVX-512 and newer; on AVX2
# machines the Eigen kernels it falls back to train the CIFAR recipe markedly slower. Set
# TF_ENABLE_ONEDNN_OPTS=0 before running python -m benchmarks to compare.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# The names below load on first use (PEP 562), so `from patchvae_tf.config import cli` checks a
# command's flags without TensorFlow, and `import patchvae_tf` alone stays cheap.
_LAZY = {
    "Encoder": "patchvae_tf.model.keras_encoder",
    "PatchVAE": "patchvae_tf.model.models",
    "VAE": "patchvae_tf.model.models",
    "Pretrained": "patchvae_tf.pretrained",
    "load": "patchvae_tf.pretrained",
    "train": "patchvae_tf.trainer",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'patchvae_tf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
