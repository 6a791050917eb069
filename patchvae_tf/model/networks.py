"""Encoders (ResNet-18 cut at a scale, DCGAN-style pyramid), the pyramid decoder and the heads."""

from __future__ import annotations

import math

import keras
from keras import layers

from patchvae_tf.config import INITIALIZATIONS, RESNET_SCALES
from patchvae_tf.model.fused import FusedBatchNorm

_LEAK = 0.2


def conv_initializer(initialization: str):
    """Kernel initializer of Conv2D layers.

    reference: PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu"), which the
    authors apply to every Conv2d: N(0, 2 / fan_out). glorot: Keras's default.
    """
    _check_initialization(initialization)
    if initialization == "reference":
        return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
    return keras.initializers.GlorotUniform()


def deconv_initializer(initialization: str):
    """Kernel initializer of Conv2DTranspose layers.

    reference: the authors leave transposed convolutions at PyTorch's default,
    kaiming_uniform_(a=sqrt(5)), i.e. U(+-1 / sqrt(fan_in)), where PyTorch's fan_in of a
    transposed kernel is out_channels * k * k, as is Keras's for its (k, k, out, in) kernel.
    """
    _check_initialization(initialization)
    if initialization == "reference":
        return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
    return keras.initializers.GlorotUniform()


def _check_initialization(initialization: str) -> None:
    if initialization not in INITIALIZATIONS:
        raise ValueError(
            f"`initialization` must be one of {INITIALIZATIONS}. "
            f"Received: initialization={initialization!r}"
        )


def conv2d(filters, kernel, strides=1, *, initialization="reference", **kwargs) -> layers.Conv2D:
    return layers.Conv2D(
        filters, kernel, strides, kernel_initializer=conv_initializer(initialization), **kwargs
    )


def conv2d_transpose(
    filters, kernel, strides=1, *, initialization="reference", **kwargs
) -> layers.Conv2DTranspose:
    return layers.Conv2DTranspose(
        filters, kernel, strides, kernel_initializer=deconv_initializer(initialization), **kwargs
    )


@keras.saving.register_keras_serializable(package="patchvae_tf")
class LeakyReLU(layers.LeakyReLU):
    """Keras's LeakyReLU, exact in float64 too: TF's LeakyRelu op holds its slope in a float32
    attribute (0.2 becomes 0.200000003), so in float64 the slope is applied here, where
    x > 0 fails (as PyTorch's leaky_relu). Other dtypes run the op.
    """

    def call(self, inputs):
        if keras.backend.standardize_dtype(inputs.dtype) != "float64":
            return super().call(inputs)
        return keras.ops.where(inputs > 0, inputs, inputs * self.negative_slope)


class _Styled(layers.Layer):
    """A layer built of convolutions and BatchNorms that share one initialization and one
    set of BatchNorm constants (``initialization``, ``batch_norm_momentum`` and
    ``batch_norm_epsilon``; defaults are the authors' PyTorch ones). Its BatchNorms run on
    TF's fused kernel in training (fused.FusedBatchNorm).
    """

    def __init__(
        self,
        initialization: str = "reference",
        batch_norm_momentum: float = 0.9,
        batch_norm_epsilon: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_initialization(initialization)
        if not 0.0 <= batch_norm_momentum < 1.0:
            raise ValueError(
                "`batch_norm_momentum` must be in [0, 1). "
                f"Received: batch_norm_momentum={batch_norm_momentum!r}"
            )
        if not batch_norm_epsilon > 0:
            raise ValueError(
                f"`batch_norm_epsilon` must be positive. Received: {batch_norm_epsilon!r}"
            )
        self.initialization = initialization
        self.batch_norm_momentum, self.batch_norm_epsilon = batch_norm_momentum, batch_norm_epsilon

    def style(self) -> dict:
        """The constructor arguments of this base, to hand on to sub-layers."""
        return {
            "initialization": self.initialization,
            "batch_norm_momentum": self.batch_norm_momentum,
            "batch_norm_epsilon": self.batch_norm_epsilon,
        }

    def _bn(self) -> FusedBatchNorm:
        return FusedBatchNorm(momentum=self.batch_norm_momentum, epsilon=self.batch_norm_epsilon)

    def _conv(self, filters, kernel, strides=1, **kwargs) -> layers.Conv2D:
        return conv2d(filters, kernel, strides, initialization=self.initialization, **kwargs)

    def _deconv(self, filters, kernel, strides=1, **kwargs) -> layers.Conv2DTranspose:
        return conv2d_transpose(
            filters, kernel, strides, initialization=self.initialization, **kwargs
        )

    def get_config(self):
        return {**super().get_config(), **self.style()}


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
    graph, which tf.train.Checkpoint saves.
    """
    for i, stage in enumerate(layer.stages):
        setattr(layer, f"stage_{i}", stage)


@keras.saving.register_keras_serializable(package="patchvae_tf")
class ResidualBlock(_Styled):
    """ResNet basic block: two 3x3 convs with BN and ReLU, plus a (projected) shortcut."""

    def __init__(self, filters: int, strides: int = 1, projection: bool = False, **kwargs):
        super().__init__(**kwargs)
        _check_positive("filters", filters)
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides!r}")
        self.filters, self.strides, self.projection = filters, strides, projection
        # PyTorch's padding 1 on both sides; TF's "same" would pad a strided conv on one side.
        self.pad = layers.ZeroPadding2D(1) if strides == 2 else None
        padding = "valid" if strides == 2 else "same"
        self.conv1 = self._conv(filters, 3, strides, padding=padding, use_bias=False)
        self.bn1 = self._bn()
        self.conv2 = self._conv(filters, 3, padding="same", use_bias=False)
        self.bn2 = self._bn()
        if projection:
            self.proj = self._conv(filters, 1, strides, use_bias=False)
            self.proj_bn = self._bn()

    def call(self, x, training=None):
        y = self.conv1(self.pad(x) if self.pad is not None else x)
        y = keras.ops.relu(self.bn1(y, training=training))
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


class _StagedEncoder(_Styled):
    """An encoder run as the sequence of its ``stages`` (a list, for freezing the first k)."""

    def call(self, x, training=None):
        for stage in self.stages:
            x = stage(x, training=training)
        return x


@keras.saving.register_keras_serializable(package="patchvae_tf")
class ResNetEncoder(_StagedEncoder):
    """ResNet-18 up to the stage that reaches 1/scale: [B, H, W, C] -> [B, H/s, W/s, D].

    scale 4 -> 64 channels, 8 -> 128, 16 -> 256, 32 -> the full 512-channel network.
    ``stages`` lists the stem and the residual stages, for freezing the first k.
    """

    WIDTHS = (64, 128, 256, 512)

    def __init__(self, scale: int = 8, **kwargs):
        super().__init__(**kwargs)
        _check_scale(scale, allowed=RESNET_SCALES)
        self.scale = scale
        stem = keras.Sequential(
            [
                # Explicit symmetric padding, as torchvision's ResNet (3 and 1 pixels).
                layers.ZeroPadding2D(3),
                self._conv(64, 7, 2, padding="valid", use_bias=False),
                self._bn(),
                layers.ReLU(),
                # Zeros pad like -inf here: the pool's inputs are ReLU outputs, >= 0.
                layers.ZeroPadding2D(1),
                layers.MaxPooling2D(3, 2, padding="valid"),
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
                    [
                        ResidualBlock(w, strides, projection=i > 0, **self.style()),
                        ResidualBlock(w, **self.style()),
                    ],
                    name=f"stage{i + 1}",
                )
            )
        self.channels = self.WIDTHS[num_stages - 1]
        _track_stages(self)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="patchvae_tf")
class PyramidEncoder(_StagedEncoder):
    """DCGAN-style: log2(scale) 4x4 stride-2 convs doubling channels, BN, LeakyReLU 0.2."""

    def __init__(self, scale: int = 8, base_channels: int = 64, **kwargs):
        super().__init__(**kwargs)
        depth = _check_scale(scale)
        _check_positive("base_channels", base_channels)
        self.scale, self.base_channels = scale, base_channels
        self.stages = []
        for i in range(depth):
            block = [self._conv(base_channels * 2**i, 4, 2, padding="same", use_bias=False)]
            # As in DCGAN, no BatchNorm on the first layer.
            if i > 0:
                block.append(self._bn())
            block.append(LeakyReLU(_LEAK))
            self.stages.append(keras.Sequential(block, name=f"stage{i + 1}"))
        self.channels = base_channels * 2 ** (depth - 1)
        _track_stages(self)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "base_channels": self.base_channels}


@keras.saving.register_keras_serializable(package="patchvae_tf")
class PyramidDecoder(_Styled):
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
        blocks = [self._deconv(width, 1, use_bias=False), self._bn(), LeakyReLU(_LEAK)]
        for _ in range(depth - 1):
            width //= 2
            blocks += [
                self._deconv(max(width, 8), 4, 2, padding="same", use_bias=False),
                self._bn(),
                LeakyReLU(_LEAK),
            ]
        # No bias on the output, as the authors' decoder.
        blocks.append(self._deconv(out_channels, 4, 2, padding="same", use_bias=False))
        self.net = keras.Sequential(blocks, name="layers")

    def call(self, z, training=None):
        # tanh in the variables' dtype (float32 under mixed precision, float64 in float64):
        # the output is compared with pixels in that dtype.
        return keras.ops.tanh(keras.ops.cast(self.net(z, training=training), self.variable_dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "scale": self.scale,
            "base_channels": self.base_channels,
            "out_channels": self.out_channels,
        }


@keras.saving.register_keras_serializable(package="patchvae_tf")
class PatchHeads(_Styled):
    """Three 3x3 conv heads on f [B, h, w, D].

    Returns appearance mean and log-variance [B, h, w, N*L] and occurrence logits
    [B, h, w, N], in the variables' dtype: float32 under mixed precision, where the latent
    math stays in float32, and float64 in a float64 model.
    Initialization reference: kaiming fan-out kernels and zero biases, so q_occ starts near
    0.5; glorot: the log-variance kernel starts at zero and the occurrence bias at logit(p).
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
        self.mean = self._conv(codes, 3, padding="same", name="appearance_mean")
        if self.initialization == "reference":
            self.logvar = self._conv(codes, 3, padding="same", name="appearance_logvar")
            self.logits = self._conv(num_parts, 3, padding="same", name="occurrence_logits")
        else:
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
            keras.ops.cast(head(f), self.variable_dtype)
            for head in (self.mean, self.logvar, self.logits)
        )

    def get_config(self):
        return {
            **super().get_config(),
            "num_parts": self.num_parts,
            "appearance_dim": self.appearance_dim,
            "occurrence_prior": self.occurrence_prior,
        }


def make_encoder(name: str, scale: int, base_channels: int = 64, **style) -> layers.Layer:
    """The encoder phi by name; ``style`` holds _Styled's arguments."""
    if name == "resnet":
        return ResNetEncoder(scale, name="encoder", **style)
    if name == "pyramid":
        return PyramidEncoder(scale, base_channels, name="encoder", **style)
    raise ValueError(f"`encoder` must be 'resnet' or 'pyramid'. Received: encoder={name!r}")
