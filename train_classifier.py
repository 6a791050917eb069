"""Trains a recognizer on a trained encoder from a few labels: python train_classifier.py
--encoder_workdir=runs/shapes --workdir=runs/recognizer --dataset=folder:PATH --labels_per_class=10.
"""

import os

# Checks the flags before TensorFlow loads (see patchvae_tf/__init__.py).
os.environ["PATCHVAE_TF_COMMAND"] = "1"
from patchvae_tf import commands  # noqa: E402
from patchvae_tf.config import cli  # noqa: E402

cli.define_recognizer()
main = commands.train_classifier_main

if __name__ == "__main__":
    cli.run(main)
