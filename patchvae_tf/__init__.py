"""PatchVAE in TensorFlow 2 / Keras 3 / TensorFlow Probability."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) drowns real
# messages in a CLI; warnings and errors still show at level 1.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
