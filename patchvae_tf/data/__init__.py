"""Input data: the tf.data pipeline, its sources (synthetic shapes, image folders, TFDS) and
where a resumed run's input continues.
"""

from patchvae_tf.data.folder_source import FOLDER_PREFIX, IMAGE_EXTENSIONS
from patchvae_tf.data.pipeline import get_source, input_dataset
from patchvae_tf.data.source import Source, decode_image, preprocess_image

__all__ = [
    "FOLDER_PREFIX",
    "IMAGE_EXTENSIONS",
    "Source",
    "decode_image",
    "get_source",
    "input_dataset",
    "preprocess_image",
]
