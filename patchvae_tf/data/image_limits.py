"""Encoded images decoded only after their header says they fit: pixel, aspect and count limits.

Every place an encoded image enters (the SavedModel's image signatures, ``load().encode`` of
files and bytes, the folder and TFDS training pipelines) reads the width and height from the
PNG IHDR chunk or the JPEG SOF segment and refuses the image before a single pixel is
allocated: a PNG of a few hundred bytes can promise 20,000 x 20,000 pixels, and a 1 x 100,000
image grows to S x 100,000 S when its shorter side is resized to the model's S.
"""

from __future__ import annotations

import dataclasses
import io
import struct

import tensorflow as tf

from patchvae_tf.config.choices import MAX_IMAGE_ASPECT, MAX_IMAGE_PIXELS, MAX_REQUEST_IMAGES

# Pixels: the working memory of decoding and resizing one image (docs/reliability.md has
# the measurement). Long side over short side: panoramas pass, a 1 x N strip does not
# (resized, its long side is max_aspect * S at most). Images in one request to an image
# signature, decoded one after another.
DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS
DEFAULT_MAX_ASPECT = MAX_IMAGE_ASPECT
DEFAULT_MAX_IMAGES = MAX_REQUEST_IMAGES
FORMATS = "JPEG or PNG"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# The JPEG start-of-frame markers that carry the frame size (not DHT C4, JPG C8, DAC CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI, EOI: no length field
# The one refusal, in Python and in the graph alike: {} are the width and the height.
_TOO_LARGE = (
    "an image of {} x {} pixels (width x height) is over the limit of {pixels} pixels "
    "({mp:.1f} MP) with a long side at most {aspect:g} times the short one"
)


class ImageRefused(ValueError):
    """An encoded image that is not a JPEG or PNG, or whose header is past the limits."""


class ImageTooLarge(ImageRefused):
    """An image whose size (from its header, or a decoded array's) is past the limits."""


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """What an image may be: pixels, long side over short side, images per request."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT
    max_images: int = DEFAULT_MAX_IMAGES

    def __post_init__(self):
        for name in ("max_pixels", "max_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer. Received: {value!r}")
        if not isinstance(self.max_aspect, (int, float)) or not self.max_aspect >= 1.0:
            raise ValueError(f"`max_aspect` must be a number >= 1. Received: {self.max_aspect!r}")
        if self.max_aspect == float("inf"):
            raise ValueError("`max_aspect` must be finite. Received: inf")

    def template(self) -> str:
        """The refusal with the limits filled in and {} for the width and the height."""
        return _TOO_LARGE.format(
            "{}", "{}", pixels=self.max_pixels, mp=self.max_pixels / 1e6, aspect=self.max_aspect
        )

    def refusal(self, width: int, height: int) -> str:
        """Why a width x height image is refused, or "" when it fits."""
        if self.fits(width, height):
            return ""
        return self.template().format(width, height)

    def fits(self, width: int, height: int) -> bool:
        short, long_ = min(width, height), max(width, height)
        return short >= 1 and width * height <= self.max_pixels and long_ <= self.max_aspect * short

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> ImageLimits:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in fields})


DEFAULT = ImageLimits()


# --- Python: files and bytes ---------------------------------------------------------


def header_size(f) -> tuple[int, int, str]:
    """(width, height, "png" | "jpeg") from the header of a binary file object, reading
    only the header (PNG: 24 bytes; JPEG: the segments up to the frame's); ImageRefused
    for anything else or a header cut short.
    """
    head = f.read(8)
    if head == PNG_MAGIC:
        ihdr = f.read(16)
        if len(ihdr) < 16 or ihdr[4:8] != b"IHDR":
            raise ImageRefused("a PNG whose IHDR header is missing or cut short")
        width, height = struct.unpack(">II", ihdr[8:16])
        return width, height, "png"
    if head[:3] != _JPEG_MAGIC:
        raise ImageRefused(f"not a {FORMATS} file (it starts with {head[:8]!r})")
    f.seek(2)
    while True:
        byte = f.read(1)
        if not byte:
            raise ImageRefused("a JPEG that ends before its frame header")
        if byte != b"\xff":
            continue  # entropy-coded data or padding between segments
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            raise ImageRefused("a JPEG that ends before its frame header")
        code = marker[0]
        if code in _STANDALONE or code == 0x00:
            continue
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            raise ImageRefused("a JPEG that ends before its frame header")
        (length,) = struct.unpack(">H", length_bytes)
        if code in _SOF:
            frame = f.read(5)
            if len(frame) < 5:
                raise ImageRefused("a JPEG whose frame header is cut short")
            height, width = struct.unpack(">HH", frame[1:5])
            return width, height, "jpeg"
        if code == 0xDA:  # start of scan before any frame header
            raise ImageRefused("a JPEG with no frame header")
        f.seek(length - 2, io.SEEK_CUR)


def check_header(f, limits: ImageLimits = DEFAULT) -> tuple[int, int]:
    """(width, height) of an encoded image that fits limits; ImageRefused otherwise."""
    width, height, _ = header_size(f)
    why = limits.refusal(width, height)
    if why:
        raise ImageTooLarge(why)
    return width, height


def check_file(path: str, limits: ImageLimits = DEFAULT) -> tuple[int, int]:
    with open(path, "rb") as f:
        return check_header(f, limits)


def decode(blob: bytes, limits: ImageLimits = DEFAULT):
    """JPEG/PNG bytes -> uint8 [h, w, C] NumPy array, after the header check."""
    check_header(io.BytesIO(blob), limits)
    return tf.io.decode_image(blob, expand_animations=False).numpy()


def check_array_size(height: int, width: int, limits: ImageLimits = DEFAULT) -> None:
    """ImageTooLarge when a decoded image of this size would be refused as a file."""
    why = limits.refusal(int(width), int(height))
    if why:
        raise ImageTooLarge(why)


# --- in the graph: the SavedModel's signatures and tf.data ---------------------------


def tf_header_size(blob: tf.Tensor, what: str = "the input") -> tf.Tensor:
    """Scalar string of a JPEG or PNG file -> int64 [2] (height, width), read from its
    header without decoding; InvalidArgument for other bytes ("{what} must hold ...").
    """
    is_png = tf.equal(tf.strings.substr(blob, 0, len(PNG_MAGIC)), PNG_MAGIC)
    known = tf.debugging.Assert(
        tf.logical_or(tf.io.is_jpeg(blob), is_png),
        [f"{what} must hold {FORMATS} files; one starts with", tf.strings.substr(blob, 0, 8)],
    )

    def png():
        # Width and height are big-endian uint32 at bytes 16..24, after "IHDR" at 12..16.
        ihdr = tf.strings.substr(tf.strings.join([blob, "\0" * 24]), 12, 12)
        chunk_ok = tf.debugging.Assert(
            tf.equal(tf.strings.substr(ihdr, 0, 4), "IHDR"),
            [f"{what}: a PNG whose IHDR header is missing or cut short"],
        )
        with tf.control_dependencies([chunk_ok]):
            raw = tf.cast(tf.io.decode_raw(tf.strings.substr(ihdr, 4, 8), tf.uint8), tf.int64)
        size = raw[0::4] * 2**24 + raw[1::4] * 2**16 + raw[2::4] * 2**8 + raw[3::4]
        return tf.reshape(tf.reverse(size, [0]), [2])

    def jpeg():
        return tf.cast(tf.image.extract_jpeg_shape(blob)[:2], tf.int64)

    with tf.control_dependencies([known]):
        return tf.cond(is_png, png, jpeg)


def tf_fits(height, width, limits: ImageLimits = DEFAULT) -> tf.Tensor:
    """A bool tensor: whether a height x width image fits limits."""
    h, w = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    short, long_ = tf.minimum(h, w), tf.maximum(h, w)
    return tf.logical_and(
        tf.logical_and(short >= 1, h * w <= limits.max_pixels),
        tf.cast(long_, tf.float64) <= limits.max_aspect * tf.cast(short, tf.float64),
    )


def tf_refusal(height, width, limits: ImageLimits = DEFAULT, what: str = "the input"):
    """A string tensor: why a height x width image is refused (as ImageLimits.refusal)."""
    w, h = tf.cast(width, tf.int64), tf.cast(height, tf.int64)
    return tf.strings.format(f"{what}: {limits.template()}", (w, h))


def tf_check_size(height, width, limits: ImageLimits = DEFAULT, what: str = "the input"):
    """An assert op (InvalidArgument with the one refusal) that height x width fits."""
    fits = tf_fits(height, width, limits)
    return tf.debugging.Assert(fits, [tf_refusal(height, width, limits, what)])


def tf_decode(blob: tf.Tensor, limits: ImageLimits = DEFAULT, what: str = "the input"):
    """Scalar string of a JPEG/PNG file -> uint8 [h, w, 3], decoded only once its header
    fits limits; palette, grey and RGBA become RGB.
    """
    size = tf_header_size(blob, what)
    with tf.control_dependencies([tf_check_size(size[0], size[1], limits, what)]):
        image = tf.io.decode_image(blob, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def tf_check_count(count: tf.Tensor, what: str, limits: ImageLimits = DEFAULT):
    """An assert op: a request of count images holds 1 to limits.max_images."""
    send = f"send 1 to {limits.max_images} images per request"
    nonempty = tf.debugging.Assert(count >= 1, [f"`{what}` is an empty batch; {send}"])
    with tf.control_dependencies([nonempty]):
        return tf.debugging.Assert(
            count <= limits.max_images,
            [tf.strings.format(f"`{what}` holds {{}} images; {send}", count)],
        )
