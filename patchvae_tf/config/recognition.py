"""The config of train_classifier.py: a recognizer trained on a trained encoder's workdir."""

from __future__ import annotations

import dataclasses
import os

from patchvae_tf.config import shared
from patchvae_tf.config.choices import CLASSIFIER_INPUTS, RECOGNIZER_HEADS
from patchvae_tf.config.fields import option
from patchvae_tf.config.shared import SourceFields
from patchvae_tf.errors import UserError


@dataclasses.dataclass(frozen=True)
class RecognizerConfig(SourceFields):
    """What the recognizer reads, how it is trained, and where it is kept."""

    dataset: str | None = option(
        None,
        "Labelled data: a TFDS name, or folder:PATH (PATH/train/CLASS/*.jpg and "
        "PATH/test/CLASS/*.jpg); unset: the data the encoder was trained on",
    )

    encoder_workdir: str = option(
        "", "Training workdir of the encoder (train.py's --workdir)", required=True
    )
    workdir: str = shared.workdir("", "The recognizer's own workdir (results.json beside them)")
    labels_per_class: int = option(
        0,
        "Train on this many labelled images per class, drawn from the training split with "
        "--seed; 0: every training image",
        minimum=0,
    )
    validation_share: float = option(
        0.0,
        "Share of the labelled training images held out to choose the epoch with the best "
        "validation top-1 (model selection); 0: none, the last epoch is kept",
        minimum=0.0,
        below=1.0,
    )
    classifier_head: str = option(
        "flatten",
        "flatten | pool (the authors' classifier: dropout, dense 512, ReLU, dense classes on "
        "the input flattened or pooled over the grid) | linear (one dense layer on the "
        "pooled input)",
        choices=RECOGNIZER_HEADS,
    )
    classifier_input: str = option(
        "features",
        "features (the encoder's feature map phi(x)) | codes (PatchVAE's part codes: "
        "occurrence maps beside appearance means; a VAE's code)",
        choices=CLASSIFIER_INPUTS,
    )
    freeze_stages: int = option(
        -1,
        "-1: the whole encoder frozen (run in inference mode); k: its first k stages frozen "
        "and the rest finetuned with the head",
        minimum=-1,
    )
    random_init: bool = option(
        False, "Start from a randomly initialised encoder instead of the trained one (a floor)"
    )
    epochs: int = option(90, "Passes over the labelled training images", positive=True)
    batch_size: int = option(
        256, "Training batch size (at most the labelled images)", positive=True
    )
    learning_rate: float = option(0.1, "Initial SGD rate (momentum 0.9)", positive=True)
    lr_step_epochs: int = option(
        30, "The SGD rate is divided by 10 every this many epochs", positive=True
    )
    dropout: float = option(
        0.5, "Dropout before the authors' head's hidden layer", minimum=0.0, below=1.0
    )
    checkpoint_every: int = option(10, "Epochs between checkpoints", positive=True)
    seed: int = shared.seed()

    def check(self) -> None:
        if os.path.abspath(self.workdir) == os.path.abspath(self.encoder_workdir):
            raise UserError(
                f"--workdir={self.workdir!r} must differ from --encoder_workdir: a recognizer "
                "keeps its own config and checkpoints"
            )
