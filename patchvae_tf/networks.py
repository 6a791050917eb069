"""Encoders (ResNet-18 cut at a scale, DCGAN-style pyramid), the pyramid decoder and the heads."""

from __future__ import annotations

import math

import keras
from keras import layers

from patchvae_tf.fused import FusedBatchNorm

_LEAK = 0.2


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def _check_scale(scale: int, allowed=None) -> int:
    if not isinstance(scale, int) or scale < 2 or scale & (scale - 1):
        raise ValueError(f"`scale` must be a power of two >= 2. Received: scale={scale!r}")
    if allowed is not None and scale not in allowed:
        raise ValueError(f"`scale` must be one of {allowed}. Received: scale={scale!r}")
    return int(math.log2(scale))


def _track_stages(layer: layers.Layer) -> None:
    """Names each of ``layer.stages`` as an attribute so TF checkpoints save it.

    Keras 3 tracks a list attribute for its own weights but leaves it out of the TF object
    graph, so a tf.train.Checkpoint of the model silently held no encoder weights (trainable
    ones survived only through the optimizer, BatchNorm moving statistics not at all).
    """
    for i, stage in enumerate(layer.stages):
        setattr(layer, f"stage_{i}", stage)


class ResidualBlock(layers.Layer):
    """ResNet basic block: two 3x3 convs with BN and ReLU, plus a (projected) shortcut."""

    def __init__(self, filters: int, strides: int = 1, projection: bool = False, **kwargs):
        super().__init__(**kwargs)
        _check_positive("filters", filters)
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides!r}")
        self.filters, self.strides, self.projection = filters, strides, projection
        self.conv1 = layers.Conv2D(filters, 3, strides, padding="same", use_bias=False)
        self.bn1 = FusedBatchNorm()
        self.conv2 = layers.Conv2D(filters, 3, padding="same", use_bias=False)
        self.bn2 = FusedBatchNorm()
        if projection:
            self.proj = layers.Conv2D(filters, 1, strides, use_bias=False)
            self.proj_bn = FusedBatchNorm()

    def call(self, x, training=None):
        y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        shortcut = self.proj_bn(self.proj(x), training=training) if self.projection else x
        return keras.ops.relu(y + shortcut)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "projection": self.projection,
        }


class ResNetEncoder(layers.Layer):
    """ResNet-18 up to the stage that reaches 1/scale: [B, H, W, C] -> [B, H/s, W/s, D].

    scale 4 -> 64 channels, 8 -> 128, 16 -> 256, 32 -> the full 512-channel network.
    ``stages`` lists the stem and the residual stages, for freezing the first k.
    """

    WIDTHS = (64, 128, 256, 512)

    def __init__(self, scale: int = 8, **kwargs):
        super().__init__(**kwargs)
        _check_scale(scale, allowed=(4, 8, 16, 32))
        self.scale = scale
        stem = keras.Sequential(
            [
                layers.Conv2D(64, 7, 2, padding="same", use_bias=False),
                FusedBatchNorm(),
                layers.ReLU(),
                layers.MaxPooling2D(3, 2, padding="same"),
            ],
            name="stem",
        )
        self.stages = [stem]
        num_stages = int(math.log2(scale)) - 1  # the stem already reaches 1/4
        for i in range(num_stages):
            strides = 1 if i == 0 else 2
            w = self.WIDTHS[i]
            self.stages.append(
                keras.Sequential(
                    [ResidualBlock(w, strides, projection=i > 0), ResidualBlock(w)],
                    name=f"stage{i + 1}",
                )
            )
        self.channels = self.WIDTHS[num_stages - 1]
        _track_stages(self)

    def call(self, x, training=None):
        for stage in self.stages:
            x = stage(x, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


class PyramidEncoder(layers.Layer):
    """DCGAN-style: log2(scale) 4x4 stride-2 convs doubling channels, BN, LeakyReLU 0.2."""

    def __init__(self, scale: int = 8, base_channels: int = 64, **kwargs):
        super().__init__(**kwargs)
        depth = _check_scale(scale)
        _check_positive("base_channels", base_channels)
        self.scale, self.base_channels = scale, base_channels
        self.stages = []
        for i in range(depth):
            block = [layers.Conv2D(base_channels * 2**i, 4, 2, padding="same", use_bias=i == 0)]
            # As in DCGAN, no BatchNorm on the first layer.
            if i > 0:
                block.append(FusedBatchNorm())
            block.append(layers.LeakyReLU(_LEAK))
            self.stages.append(keras.Sequential(block, name=f"stage{i + 1}"))
        self.channels = base_channels * 2 ** (depth - 1)
        _track_stages(self)

    def call(self, x, training=None):
        for stage in self.stages:
            x = stage(x, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "base_channels": self.base_channels}


class PyramidDecoder(layers.Layer):
    """[B, h, w, K] -> [B, h*s, w*s, C] in [-1, 1].

    A 1x1 transposed conv, then log2(scale) 4x4 stride-2 transposed convs halving channels
    with BN + LeakyReLU 0.2; the last goes to C channels and tanh.
    """

    def __init__(self, scale: int = 8, base_channels: int = 64, out_channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        depth = _check_scale(scale)
        _check_positive("base_channels", base_channels)
        _check_positive("out_channels", out_channels)
        self.scale, self.base_channels, self.out_channels = scale, base_channels, out_channels
        width = base_channels * 2 ** (depth - 1)
        blocks = [
            layers.Conv2DTranspose(width, 1, use_bias=False),
            FusedBatchNorm(),
            layers.LeakyReLU(_LEAK),
        ]
        for _ in range(depth - 1):
            width //= 2
            blocks += [
                layers.Conv2DTranspose(max(width, 8), 4, 2, padding="same", use_bias=False),
                FusedBatchNorm(),
                layers.LeakyReLU(_LEAK),
            ]
        blocks.append(layers.Conv2DTranspose(out_channels, 4, 2, padding="same"))
        self.net = keras.Sequential(blocks, name="layers")

    def call(self, z, training=None):
        # tanh in float32: the output is compared with float32 pixels.
        return keras.ops.tanh(keras.ops.cast(self.net(z, training=training), "float32"))

    def get_config(self):
        return {
            **super().get_config(),
            "scale": self.scale,
            "base_channels": self.base_channels,
            "out_channels": self.out_channels,
        }


class PatchHeads(layers.Layer):
    """Three 3x3 conv heads on f [B, h, w, D].

    Returns appearance mean and log-variance [B, h, w, N*L] and occurrence logits
    [B, h, w, N], all float32 (the latent math stays in float32 under mixed precision).
    """

    def __init__(self, num_parts: int, appearance_dim: int, occurrence_prior: float, **kwargs):
        super().__init__(**kwargs)
        _check_positive("num_parts", num_parts)
        _check_positive("appearance_dim", appearance_dim)
        if not 0.0 < occurrence_prior < 1.0:
            raise ValueError(
                f"`occurrence_prior` must be in (0, 1). Received: {occurrence_prior!r}"
            )
        self.num_parts, self.appearance_dim = num_parts, appearance_dim
        self.occurrence_prior = occurrence_prior
        codes = num_parts * appearance_dim
        self.mean = layers.Conv2D(codes, 3, padding="same", name="appearance_mean")
        self.logvar = layers.Conv2D(
            codes, 3, padding="same", name="appearance_logvar", kernel_initializer="zeros"
        )
        # Start the occurrence logits at the prior, so the first steps are not spent
        # paying the occurrence rate for parts that fire everywhere.
        bias = math.log(occurrence_prior / (1.0 - occurrence_prior))
        self.logits = layers.Conv2D(
            num_parts,
            3,
            padding="same",
            name="occurrence_logits",
            bias_initializer=keras.initializers.Constant(bias),
        )

    def call(self, f, training=None):
        del training
        return tuple(
            keras.ops.cast(head(f), "float32") for head in (self.mean, self.logvar, self.logits)
        )

    def get_config(self):
        return {
            **super().get_config(),
            "num_parts": self.num_parts,
            "appearance_dim": self.appearance_dim,
            "occurrence_prior": self.occurrence_prior,
        }


def make_encoder(name: str, scale: int, base_channels: int = 64) -> layers.Layer:
    if name == "resnet":
        return ResNetEncoder(scale, name="encoder")
    if name == "pyramid":
        return PyramidEncoder(scale, base_channels, name="encoder")
    raise ValueError(f"`encoder` must be 'resnet' or 'pyramid'. Received: encoder={name!r}")
