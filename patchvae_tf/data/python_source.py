"""Training data passed from Python: a tf.data.Dataset, a function making one per input
pipeline, a NumPy array of images or a list of image files.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from patchvae_tf.data import image_limits, positions
from patchvae_tf.data.source import Source, decode_image, preprocess_image, to_rgb
from patchvae_tf.errors import UserError

# config.json's --dataset for data passed from Python: the workdir does not hold it, and
# the commands that would read it again (evaluate.py, export, the recognizer) say so.
PREFIX = "python:"
KINDS = ("array", "files", "dataset", "function")
EXPECTED = (
    "a tf.data.Dataset of images [h, w, c] (or batches of them), of (image, label) pairs or of "
    "dicts with an 'image'; a function input_context -> such a Dataset; a NumPy array "
    "[n, h, w, c]; or a list of JPEG / PNG file paths"
)
_NOT_SPLIT = (
    "a tf.data.Dataset object cannot be split across the {n} input pipelines of this "
    "strategy (each worker would read every example); pass a function instead, "
    "data=lambda input_context: dataset.shard(input_context.num_input_pipelines, "
    "input_context.input_pipeline_id)"
)


def is_python_data(dataset: str) -> bool:
    """Whether a config's --dataset names data that was passed from Python (not stored)."""
    return dataset.startswith(PREFIX)


def not_stored(dataset: str) -> UserError:
    """The one-line refusal of a command that would read a workdir's data passed from Python."""
    return UserError(
        f"this model was trained on data passed from Python ({dataset!r}), which its workdir "
        "does not hold: name the data for this command (evaluate.py --dataset=..., python -m "
        "export --check_images=FOLDER / --calibration_folder=FOLDER)"
    )


def python_source(
    data, image_size: int, limits: image_limits.ImageLimits = image_limits.DEFAULT
) -> Source:
    """The Source of data passed to patchvae_tf.train; raises UserError for anything else.

    Arrays and file lists are shuffled per epoch from the seed and resume exactly at any
    example (as folders do); a Dataset or function is read in its own order, repeated, and a
    resumed run skips the examples already seen, which is exact only when it yields the same
    examples in the same order each time it is iterated. Its ``name`` says which kind it is.
    """
    if isinstance(data, tf.data.Dataset):
        _first_image(_images(data), "the dataset")
        return _stream_source("dataset", lambda ctx: _checked_split(data, ctx), image_size)
    if callable(data):

        def make(ctx):
            made = data(ctx)
            if not isinstance(made, tf.data.Dataset):
                raise UserError(
                    f"the data function returned a {type(made).__name__}, not a tf.data.Dataset"
                )
            return made

        _first_image(_images(make(tf.distribute.InputContext())), "the data function's dataset")
        return _stream_source("function", make, image_size)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        data = data[0]  # (images, labels): training reads the images
    if isinstance(data, np.ndarray):
        return _array_source(data, image_size)
    if (
        isinstance(data, (list, tuple))
        and data
        and all(isinstance(p, (str, os.PathLike)) for p in data)
    ):
        return _files_source([os.fspath(p) for p in data], image_size, limits)
    raise UserError(f"data must be {EXPECTED}; got {_describe(data)}")


def _describe(data) -> str:
    if isinstance(data, (list, tuple)):
        return f"a {type(data).__name__} of {len(data)} items" + (
            f", the first a {type(data[0]).__name__}" if data else ""
        )
    return f"a {type(data).__name__}"


def _source(kind: str, read_train, read_test, size: int) -> Source:
    readers = {"train": read_train, "test": read_test}
    # No labels are read: recognition on this data is evaluate.py's, with the data named.
    return Source(PREFIX + kind, None, False, readers, {"train": size, "test": size})


# --- datasets and functions ---------------------------------------------------------


def _checked_split(dataset: tf.data.Dataset, ctx) -> tf.data.Dataset:
    n = positions.pipeline(ctx)[1]
    if n > 1:
        raise UserError(_NOT_SPLIT.format(n=n))
    return dataset


def _images(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The images of a dataset's elements, one image [h, w, c] per element."""
    spec = dataset.element_spec
    if isinstance(spec, dict):
        if "image" not in spec:
            raise UserError(
                f"the dataset's elements are dicts without an 'image' (keys {sorted(spec)})"
            )
        dataset, spec = dataset.map(lambda ex: ex["image"]), spec["image"]
    elif isinstance(spec, tuple):
        dataset, spec = dataset.map(lambda *ex: ex[0]), spec[0]
    if not isinstance(spec, tf.TensorSpec):
        raise UserError(f"the dataset's images must be tensors, got {spec}")
    rank = spec.shape.rank
    if rank == 4:  # batches: training batches again at its own size
        return dataset.unbatch()
    if rank == 2:  # grey without a channel axis
        return dataset.map(lambda image: image[..., None])
    if rank != 3:
        raise UserError(
            f"the dataset's images must be [h, w, c] or batches [b, h, w, c], got shape "
            f"{spec.shape}"
        )
    return dataset


def _first_image(images: tf.data.Dataset, what: str) -> None:
    """Refuses what training cannot read, from the first image: an empty dataset, a channel
    count other than 1, 3 or 4, a non-numeric dtype, or floats outside [0, 255].
    """
    first = next(iter(images.take(1)), None)
    if first is None:
        raise UserError(f"{what} is empty")
    _check_pixels(first.numpy(), f"{what}'s first image")


def _check_pixels(array: np.ndarray, where: str) -> None:
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape[:2]:
        raise UserError(f"{where} has shape {array.shape}; expected [h, w, 1 | 3 | 4]")
    if array.dtype == np.uint8:
        return
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise UserError(f"{where} has dtype {array.dtype}; expected uint8 or float pixels")
    low, high = float(array.min()), float(array.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 255.0:
        raise UserError(f"{where} has values in [{low}, {high}]; expected pixels in [0, 255]")
    if np.issubdtype(array.dtype, np.floating) and high <= 1.0 and high > 0.0:
        raise UserError(
            f"{where} has float values in [{low}, {high}]: pixels in [0, 1]? Training takes "
            "[0, 255] (multiply by 255)"
        )


def _prepared(image: tf.Tensor, image_size: int) -> dict:
    return {"image": preprocess_image(to_rgb(image), image_size)}


def _stream_source(kind: str, make: Callable, image_size: int) -> Source:
    """A Dataset (or a function making one per input pipeline) read in its own order."""

    def read(input_context=None, shuffle_seed=None, start=0):
        # A function always gets a context: one pipeline of one where no strategy gives one.
        images = _images(make(input_context or tf.distribute.InputContext()))
        if shuffle_seed is not None:
            # Skipped before decoding and resizing: a resumed run pays only for reading.
            images = images.repeat().skip(start)
        return images.map(
            lambda image: _prepared(image, image_size), num_parallel_calls=tf.data.AUTOTUNE
        )

    return _source(kind, read, read, 0)


# --- arrays and files -----------------------------------------------------------------


def _by_index(count: int, load: Callable, skip_errors: bool = False) -> Callable:
    """A source's reader of count items by index: load(i) makes item i. Training's order is
    positions.epoch_indices' (resumable at any example); otherwise each input pipeline reads
    every num-th item from its own. skip_errors drops an item whose load fails.
    """

    def read(input_context=None, shuffle_seed=None, start=0):
        if shuffle_seed is not None:
            order = positions.epoch_indices(count, shuffle_seed, start, input_context)
        else:
            pid, num = positions.pipeline(input_context)
            order = tf.data.Dataset.range(pid, count, num)
        items = order.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        return items.ignore_errors(log_warning=True) if skip_errors else items

    return read


def _array_source(images: np.ndarray, image_size: int) -> Source:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or not len(images):
        raise UserError(
            f"an array of images must be [n, h, w, c] with n >= 1, got shape {images.shape}"
        )
    _check_pixels(images.reshape(-1, *images.shape[2:]), "the array")
    pixels = tf.constant(images)
    read = _by_index(len(images), lambda i: _prepared(tf.gather(pixels, i), image_size))
    return _source("array", read, read, len(images))


def _files_source(paths: list[str], image_size: int, limits) -> Source:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(
            f"{len(missing)} of the {len(paths)} image files do not exist, first {missing[0]!r}"
        )
    names = tf.constant(paths)

    def load(i):
        blob = tf.io.read_file(tf.gather(names, i))
        return _prepared(decode_image(blob, limits, "a training image"), image_size)

    # A file that fails to decode, or is past the size limits, is dropped, as in folders.
    read = _by_index(len(paths), load, skip_errors=True)
    return _source("files", read, read, len(paths))
