"""The export module: the deterministic encoder as a tf.Module with its TF Serving signatures."""

from __future__ import annotations

import tensorflow as tf

from patchvae_tf import data
from patchvae_tf.data import image_limits
from patchvae_tf.model import models, vae
from patchvae_tf.pixels import to_model

IMAGES = "images"
IMAGE_BYTES = "image_bytes"
IMAGE_TENSOR = "image_tensor"
DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serve_image_bytes"
# Model Garden's image_tensor input: uint8 images of any size, resized inside.
TENSOR_SIGNATURE = "serve_image_tensor"
# serving_default's checks, then the encoder compiled by XLA: half serving_default's op time
# at batch 1 in the profile, slower at batch 128 (docs/performance.md has the figures).
XLA_SIGNATURE = "serving_xla"


def encoder_parts(model) -> dict:
    """The layers the deterministic encoder uses, by their attribute name (no decoder)."""
    if isinstance(model, (models.PatchVAE, vae.VAE)):
        return model.encoder_parts()
    raise TypeError(f"`model` must be a PatchVAE or a VAE. Received: {type(model).__name__}")


def limits_of(cfg) -> image_limits.ImageLimits:
    """What the image signatures accept, from an ExportConfig's flags."""
    return image_limits.ImageLimits(
        cfg.max_image_pixels, cfg.max_image_aspect, cfg.max_request_images
    )


def output_shapes(model) -> dict[str, list[int | None]]:
    """Output name -> shape with batch None, as the signatures return them."""
    d = model.encoder.channels
    if isinstance(model, models.PatchVAE):
        g, n, l_ = model.grid, model.num_parts, model.appearance_dim
        return {"occurrence": [None, g, g, n], "appearance": [None, n, l_], "features": [None, d]}
    return {"appearance": [None, model.code_size], "features": [None, d]}


class EncoderServing(tf.Module):
    """Raw pixels or encoded images in, occurrence / appearance / features out.

    Only the encoder's variables are tracked, so the SavedModel holds no decoder weights.
    """

    def __init__(
        self,
        model,
        limits: image_limits.ImageLimits = image_limits.DEFAULT,
        name: str = "patchvae_encoder",
    ):
        super().__init__(name=name)
        # Plain Python values: the graphs hold them as constants.
        self._limits = limits
        # The TF variables themselves, not the Keras layers: TF Serving's session loader cannot
        # find the variables the functions capture through Keras's wrappers.
        self.encoder_variables = {
            v.path.replace("/", "."): v.value
            for layer in encoder_parts(model).values()
            for v in layer.variables
        }
        # A bound method is not trackable, so the model (and its decoder) stays out.
        self._encode = model.encode
        self.image_size = int(model.image_size)
        s = self.image_size
        self.expected = f"float32 [batch, {s}, {s}, 3] pixel values in [0, 255]"
        self.encode_pixels = tf.function(
            self._encode_pixels,
            input_signature=[tf.TensorSpec([None, s, s, 3], tf.float32, name=IMAGES)],
        )
        # Unknown rank, so a wrong rank reaches the in-graph checks (InvalidArgument with a
        # message) instead of failing signature binding with a client-side TypeError.
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec(None, tf.float32, name=IMAGES)]
        )
        # XLA compiles only the encoder: inside a jit_compile function a failed assert does
        # not raise (XLA drops Assert ops), so the checks stay outside, in the signature.
        self._encode_pixels_xla = tf.function(self._encode_pixels, jit_compile=True)
        self.serve_xla = tf.function(
            self._serve_xla, input_signature=[tf.TensorSpec(None, tf.float32, name=IMAGES)]
        )
        self.serve_image_bytes = tf.function(
            self._serve_image_bytes,
            input_signature=[tf.TensorSpec(None, tf.string, name=IMAGE_BYTES)],
        )
        self.serve_image_tensor = tf.function(
            self._serve_image_tensor,
            input_signature=[tf.TensorSpec(None, tf.uint8, name=IMAGE_TENSOR)],
        )

    def signatures(self) -> dict:
        return {
            DEFAULT_SIGNATURE: self.serve.get_concrete_function(),
            BYTES_SIGNATURE: self.serve_image_bytes.get_concrete_function(),
            TENSOR_SIGNATURE: self.serve_image_tensor.get_concrete_function(),
            XLA_SIGNATURE: self.serve_xla.get_concrete_function(),
        }

    def inputs(self) -> dict:
        """What each signature takes, for the report; limits: what load() of the export applies."""
        s = self.image_size
        return {
            IMAGES: f"float32 [batch, {s}, {s}, 3], 0..255",
            IMAGE_BYTES: "string [batch], JPEG or PNG files of any size within the limits",
            IMAGE_TENSOR: "uint8 [batch, height, width, 3], any size within the limits, "
            "one size per batch",
            "limits": self._limits.to_dict(),
        }

    def parameter_count(self) -> int:
        """Scalars in the encoder's variables (BatchNorm statistics included)."""
        return int(sum(v.shape.num_elements() for v in self.encoder_variables.values()))

    def _encode_pixels(self, images):
        """Images [B, S, S, 3] float 0..255 -> the encoder outputs; no checks (the ONNX graph)."""
        return self._encode_scaled(to_model(tf.clip_by_value(images, 0.0, 255.0)))

    def _encode_scaled(self, x):
        """X [B, S, S, 3] in [-1, 1] -> {name: output} of model.encode (inference mode)."""
        return {k: tf.identity(v, name=k) for k, v in self._encode(x, training=False).items()}

    def _serve(self, images):
        """Images [B, S, S, 3] float32 0..255 -> outputs, after checking shape and values."""
        # No clip: the checks have refused every value it would change (two full passes
        # over the input that protect nothing).
        return self._encode_scaled(to_model(self._checked(images)))

    def _serve_xla(self, images):
        """As _serve, with the encoder compiled by XLA (the checks are not)."""
        return self._encode_pixels_xla(self._checked(images))

    def _checked(self, images):
        """Images, once they are known to be [B >= 1, S, S, 3] values in [0, 255]."""
        # EnsureShape fails with InvalidArgument naming the expected shape, for a wrong rank,
        # size or channel count alike.
        images = tf.ensure_shape(images, [None, self.image_size, self.image_size, 3])
        finite = tf.debugging.assert_all_finite(images, f"`images` must be {self.expected}")
        # An empty batch would pass the range checks and fail deep in a convolution.
        nonempty = tf.debugging.assert_positive(
            tf.shape(images)[0], message=f"`images` is an empty batch; send {self.expected}"
        )
        with tf.control_dependencies([finite, nonempty]):
            in_range = [
                tf.debugging.assert_greater_equal(
                    tf.reduce_min(images),
                    0.0,
                    message=f"`images` must be {self.expected}; got a negative value",
                ),
                tf.debugging.assert_less_equal(
                    tf.reduce_max(images),
                    255.0,
                    message=f"`images` must be {self.expected}; got a value above 255",
                ),
            ]
        with tf.control_dependencies(in_range):
            return tf.identity(images)

    def _decode_each(self, blobs, name: str):
        """JPEG/PNG files [B] of any size -> [B, S, S, 3] in [-1, 1], resized and cropped as in
        training, each header checked against the limits before it is decoded.
        """
        return self._each_image(
            lambda blob: data.preprocess_image(
                data.decode_image(blob, self._limits, f"`{name}`"), self.image_size
            ),
            blobs,
        )

    def _each_image(self, fn, images):
        """Runs fn on each image in turn -> [B, S, S, 3] float32: a request holds one
        full-size decoded image at most, so its memory is bounded by the pixel limit.
        """
        s = self.image_size
        return tf.map_fn(
            fn,
            images,
            fn_output_signature=tf.TensorSpec([s, s, 3], tf.float32),
            parallel_iterations=1,
        )

    def _counted(self, images, count, name: str):
        """Images, once their count (a scalar tensor) is within the per-request limit."""
        check = image_limits.tf_check_count(count, name, self._limits)
        with tf.control_dependencies([check]):
            return tf.identity(images)

    def _serve_image_bytes(self, image_bytes):
        """image_bytes [B] string of JPEG/PNG files of any size -> outputs."""
        check = tf.debugging.assert_rank(
            image_bytes, 1, message="`image_bytes` must be a string [batch] of JPEG or PNG files"
        )
        with tf.control_dependencies([check]):
            image_bytes = self._counted(image_bytes, tf.size(image_bytes), IMAGE_BYTES)
        return self._encode_scaled(self._decode_each(image_bytes, IMAGE_BYTES))

    def _serve_image_tensor(self, image_tensor):
        """image_tensor uint8 [B, H, W, 3], any H and W (one size per batch) -> outputs,
        each image resized and centre-cropped as in training, after the size and count
        checks of the image-bytes signature.
        """
        # EnsureShape fails with InvalidArgument naming the expected shape, as serving_default's.
        images = tf.ensure_shape(image_tensor, [None, None, None, 3])
        shape = tf.shape(images)
        count = image_limits.tf_check_count(shape[0], IMAGE_TENSOR, self._limits)
        with tf.control_dependencies([count]):
            size = image_limits.tf_check_size(shape[1], shape[2], self._limits, f"`{IMAGE_TENSOR}`")
        with tf.control_dependencies([size]):
            images = tf.identity(images)
        s = self.image_size
        return self._encode_scaled(
            self._each_image(lambda image: data.preprocess_image(image, s), images)
        )
