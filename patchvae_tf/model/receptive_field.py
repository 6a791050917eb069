"""The receptive field of an encoder: the input region one occurrence logit sees."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from patchvae_tf.model import networks
from patchvae_tf.model.backbone import Backbone


def _conv_chain(layer) -> list[tuple[int, int]]:
    """(kernel, stride) of the convolutions and poolings on layer's longest path, in order."""
    if isinstance(layer, keras.Sequential):
        return [ks for sub in layer.layers for ks in _conv_chain(sub)]
    if hasattr(layer, "stages"):  # the encoders
        return [ks for stage in layer.stages for ks in _conv_chain(stage)]
    if isinstance(layer, networks.ResidualBlock):
        # The residual path (two 3x3 convs) sees further than the 1x1 shortcut.
        return _conv_chain(layer.conv1) + _conv_chain(layer.conv2)
    if isinstance(layer, keras.layers.Conv2D):
        return [(int(layer.kernel_size[0]), int(layer.strides[0]))]
    if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        return [(int(layer.pool_size[0]), int(layer.strides[0]))]
    return []


def receptive_field(encoder, head_kernel: int = 3) -> int:
    """Side in pixels of the input region one occurrence logit sees.

    Walks the encoder's convolutions and poolings (each adds (k - 1) * jump), then the
    head_kernel x head_kernel head conv on the feature map. A Keras backbone's graph is not
    walked but measured (_measured).
    """
    if isinstance(encoder, Backbone):
        return _measured(encoder.network, head_kernel)
    size, jump = 1, 1
    for kernel, stride in _conv_chain(encoder) + [(head_kernel, 1)]:
        size += (kernel - 1) * jump
        jump *= stride
    return size


def _measured(network: keras.Model, head_kernel: int, probe: int = 256) -> int:
    """The receptive field of any Keras network, measured: the span of input rows that the
    gradient of the centre cell's features reaches on a random probe x probe image (random,
    so that ReLUs pass gradients), plus the head's kernel at the map's stride. Capped by
    the probe, which is larger than any receptive field of the cut networks this takes.
    """
    x = tf.random.stateless_normal([1, probe, probe, 3], seed=[0, 1])
    with tf.GradientTape() as tape:
        tape.watch(x)
        f = tf.cast(network(x, training=False), tf.float32)
        h, w = int(f.shape[1]), int(f.shape[2])
        centre = tf.reduce_sum(tf.square(f[0, h // 2, w // 2]))
    reached = np.nonzero(np.abs(tape.gradient(centre, x).numpy()[0]).sum(axis=(1, 2)))[0]
    return int(reached.max() - reached.min() + 1 + (head_kernel - 1) * (probe // h))
