"""A classifier on a PatchVAE (or VAE) encoder: the authors' head or a linear one, reading the
encoder's feature map or its part codes, with the first stages frozen.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from patchvae_tf.config import CLASSIFIER_INPUTS, RECOGNIZER_HEADS
from patchvae_tf.model.autoencoder import Autoencoder

# classifier.py's SGD weight decay, added to the gradient (PyTorch's coupled form).
WEIGHT_DECAY = 1e-4
HIDDEN_UNITS = 512


def trainable(stages, frozen: int) -> list:
    """Variables the classifier trains in the encoder: those of the stages after the first
    ``frozen``, without BatchNorm's scale and offset, which the authors never train
    (set_bn_fix); BatchNorm statistics still follow the batches in every stage.
    """
    out = []
    for stage in stages[frozen:]:
        # TrackableView walks every object a stage holds (TF's public checkpoint graph), so
        # nested blocks' BatchNorms are found without Keras's private layer walk.
        batch_norms = [
            obj
            for obj in tf.train.TrackableView(stage).descendants()
            if isinstance(obj, keras.layers.BatchNormalization)
        ]
        fixed = {id(v) for bn in batch_norms for v in bn.trainable_variables}
        out += [v for v in stage.trainable_variables if id(v) not in fixed]
    return out


@keras.saving.register_keras_serializable(package="patchvae_tf")
class Standardize(keras.layers.Layer):
    """(x - mean) / std per feature, with mean and std fixed weights set from training images
    (``set``): the linear head's input scaling, as the linear probes standardise theirs.
    """

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"Standardize needs a known last axis. Received: {input_shape}")
        self.mean = self.add_weight(shape=(dim,), initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=(dim,), initializer="ones", trainable=False, name="std")

    def set(self, features) -> None:
        """Sets mean and std from features [n, D] (std floored at 1e-6)."""
        x = tf.convert_to_tensor(features, tf.float32)
        self.mean.assign(tf.reduce_mean(x, 0))
        self.std.assign(tf.maximum(tf.math.reduce_std(x, 0), 1e-6))

    def call(self, x, training=False):
        return (x - self.mean) / self.std


def num_stages(model) -> int:
    """The encoder's stages a classifier can freeze one by one (0: frozen whole only)."""
    return len(getattr(model.encoder, "stages", None) or ())


class Classifier:
    """``model``'s encoder under a head, the first ``frozen`` stages fixed.

    head flatten: flatten -> dropout -> dense 512 -> ReLU -> dense classes (normal(0, 0.01)
    weights, zero biases), the authors' classifier.py; pool: the same on the input averaged
    over its grid (their ``--arch=resnet18``); linear: dense classes on the pooled input,
    standardised with the training images' statistics (``standardize``), as a linear probe.
    inputs features: phi(x) [B, h, w, D]; codes: PatchVAE's occurrence maps q_occ [B, h, w, N]
    (flatten) or their maximum over the grid [B, N] (pool, linear) beside the appearance
    means [B, N * L] (a VAE: its code [B, N * L]).

    ``step``: SGD with momentum 0.9 and weight decay 1e-4 added to the gradient. As under
    PyTorch's model.train(), BatchNorm normalises with batch statistics and updates its
    moving averages in frozen stages too, unless ``inference_encoder``: then the encoder
    runs in inference mode (a frozen feature extractor, what a recognizer on a wholly
    frozen encoder wants).
    """

    def __init__(
        self,
        model: Autoencoder,
        num_classes: int,
        frozen: int,
        *,
        head: str = "flatten",
        inputs: str = "features",
        dropout: float = 0.5,
        seed: int = 0,
        inference_encoder: bool = False,
    ):
        if head not in RECOGNIZER_HEADS:
            raise ValueError(f"`head` must be one of {RECOGNIZER_HEADS}. Received: head={head!r}")
        if inputs not in CLASSIFIER_INPUTS:
            raise ValueError(
                f"`inputs` must be one of {CLASSIFIER_INPUTS}. Received: inputs={inputs!r}"
            )
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={num_classes!r}")
        stages = num_stages(model)
        if not 0 <= frozen <= stages:
            raise ValueError(f"`frozen` must be in [0, {stages}]. Received: frozen={frozen!r}")
        init = dict(
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01, seed=seed),
            bias_initializer="zeros",
        )
        self.model, self.num_classes, self.frozen = model, num_classes, frozen
        self.head_kind, self.inputs, self.inference_encoder = head, inputs, inference_encoder
        pooled = head != "flatten"
        if inputs == "features" and pooled:
            reduce = keras.layers.GlobalAveragePooling2D()
        else:  # codes arrive flat ([B, C]) from _head_input; flatten is their identity
            reduce = keras.layers.Flatten()
        if head == "linear":
            layers = [
                reduce,
                Standardize(name="standardize"),
                keras.layers.Dense(num_classes, **init),
            ]
        else:
            layers = [
                reduce,
                keras.layers.Dropout(dropout, seed=seed),
                keras.layers.Dense(HIDDEN_UNITS, **init),
                keras.layers.ReLU(),
                keras.layers.Dense(num_classes, **init),
            ]
        self.head = keras.Sequential(layers, name="classifier")
        # One traced inference function per classifier, shared by every scoring pass.
        self.infer = tf.function(lambda x: self.logits(x, False), reduce_retracing=True)
        size = model.image_size
        self.logits(tf.zeros([1, size, size, 3]), False)
        self.variables = self.head.trainable_variables + self._encoder_variables(stages)

    def _encoder_variables(self, stages: int) -> list:
        if self.frozen == stages:
            return []
        out = trainable(self.model.encoder.stages, self.frozen)
        if self.inputs == "codes":  # the layers between phi(x) and the codes learn too
            parts = self.model.encoder_parts()
            for name, layer in parts.items():
                if name != "encoder":
                    out += trainable([layer], 0)
        return out

    def _head_input(self, x, training):
        """The head's input and the pooled features [B, D] of images x [B, S, S, 3] in [-1, 1]."""
        encoder_training = training and not self.inference_encoder
        if self.inputs == "features":
            f, pooled = self.model.features(x, training=encoder_training)
            return f, pooled
        encoded = self.model.encode(x, training=encoder_training)
        appearance = tf.reshape(encoded["appearance"], [tf.shape(x)[0], -1])
        if "occurrence" not in encoded:  # the VAE's code is its appearance alone
            return appearance, encoded["features"]
        q = encoded["occurrence"]
        if self.head_kind == "flatten":
            occurrence = tf.reshape(q, [tf.shape(x)[0], -1])
        else:
            occurrence = tf.reduce_max(q, axis=[1, 2])
        return tf.concat([occurrence, appearance], axis=-1), encoded["features"]

    def standardize(self, batches) -> None:
        """The linear head: sets its input scaling from the images of batches ((images,
        labels) pairs in [-1, 1]), run in inference mode. Nothing for the authors' head.
        """
        if self.head_kind != "linear":
            return
        reduce, standardize = self.head.layers[:2]
        fn = tf.function(lambda x: reduce(self._head_input(x, False)[0]), reduce_retracing=True)
        standardize.set(tf.concat([fn(x) for x, _ in batches], 0))

    def logits(self, x, training):
        """Logits [B, classes] of images [B, S, S, 3] in [-1, 1]."""
        return self.head(self._head_input(x, training)[0], training=training)

    def outputs(self, x):
        """Inference: {"probabilities" [B, classes], "features" [B, D]} of x in [-1, 1]."""
        h, pooled = self._head_input(x, False)
        logits = self.head(h, training=False)
        return {"probabilities": tf.nn.softmax(logits), "features": pooled}

    def step(self, optimizer, images, labels):
        """One SGD step; returns the cross-entropy (before the step), the head's input, the
        logits and the gradients of ``variables``.
        """
        with tf.GradientTape() as tape:
            features = self._head_input(images, True)[0]
            logits = self.head(features, training=True)
            ce = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
            # Weight decay in the loss: its gradient wd * w is what PyTorch's SGD adds.
            decay = 0.5 * WEIGHT_DECAY * tf.add_n([tf.reduce_sum(v * v) for v in self.variables])
            total = ce + decay
        grads = tape.gradient(total, self.variables)
        optimizer.apply_gradients(zip(grads, self.variables, strict=True))
        return ce, features, logits, grads


def classifier(
    model: Autoencoder,
    cfg,
    num_classes: int,
    frozen: int,
    *,
    inputs: str = "features",
    inference_encoder: bool = False,
) -> Classifier:
    """The Classifier on ``model`` that a command's config asks for: its classifier_head,
    dropout and seed (evaluate.py's finetuning, train_classifier.py's recognizer).
    """
    return Classifier(
        model,
        num_classes,
        frozen,
        head=cfg.classifier_head,
        inputs=inputs,
        dropout=cfg.dropout,
        seed=cfg.seed,
        inference_encoder=inference_encoder,
    )
