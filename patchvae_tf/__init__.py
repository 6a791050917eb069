"""PatchVAE in TensorFlow 2 / Keras 3 / TensorFlow Probability."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) drowns real
# messages in a CLI; warnings and errors still show at level 1.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow turns its oneDNN kernels on only for CPUs with AVX-512 and newer; on AVX2
# machines the Eigen kernels it falls back to train the CIFAR recipe markedly slower. Set
# TF_ENABLE_ONEDNN_OPTS=0 before running python -m benchmarks to compare.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
