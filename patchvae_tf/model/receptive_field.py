"""The receptive field of an encoder: the input region one occurrence logit sees."""

from __future__ import annotations

import keras

from patchvae_tf.model import networks


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
    head_kernel x head_kernel head conv on the feature map.
    """
    size, jump = 1, 1
    for kernel, stride in _conv_chain(encoder) + [(head_kernel, 1)]:
        size += (kernel - 1) * jump
        jump *= stride
    return size
