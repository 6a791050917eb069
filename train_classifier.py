"""Trains a recognizer on a trained encoder from a few labels: python train_classifier.py
--encoder_workdir=runs/shapes --workdir=runs/recognizer --dataset=folder:PATH --labels_per_class=10.
"""

from patchvae_tf import commands

if __name__ == "__main__":
    commands.train_classifier_script()
