"""Recognition on the encoder: the classifier (classifier.py), its one training loop and
scores (fit.py), the labelled images it learns from (labels.py) and train_classifier.py's
recognizer workdir (recognizer.py, imported on its own).
"""

from patchvae_tf.recognition.classifier import WEIGHT_DECAY, Classifier, num_stages, trainable
from patchvae_tf.recognition.fit import (
    LabelledImages,
    predict,
    scores,
    topk_accuracy,
    train_epochs,
)
from patchvae_tf.recognition.labels import Selection, draw, select

__all__ = [
    "WEIGHT_DECAY",
    "Classifier",
    "LabelledImages",
    "Selection",
    "draw",
    "num_stages",
    "predict",
    "scores",
    "select",
    "topk_accuracy",
    "train_epochs",
    "trainable",
]
