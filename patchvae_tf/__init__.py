"""PatchVAE in TensorFlow 2 / Keras 3 / TensorFlow Probability.

``patchvae_tf.train(config, data)`` trains on data passed from Python and
``patchvae_tf.load(path)`` opens a training workdir or an export directory (docs/api.md);
importing the package registers its layers and models for Keras serialization, so
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

# The commands (train.py, evaluate.py, python -m export / benchmarks) set this before they
# import the package: they check their flags first and refuse a bad one in a tenth of a
# second, then import TensorFlow themselves. Everyone else gets the library on import.
if not os.environ.get("PATCHVAE_TF_COMMAND"):
    from patchvae_tf.model.keras_encoder import Encoder  # noqa: E402  (registers every layer)
    from patchvae_tf.model.models import VAE, PatchVAE  # noqa: E402
    from patchvae_tf.pretrained import Pretrained, load  # noqa: E402
    from patchvae_tf.trainer import train  # noqa: E402

    __all__ = ["VAE", "Encoder", "PatchVAE", "Pretrained", "load", "train"]
