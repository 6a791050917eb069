"""Any Keras model as the encoder phi: a backbone passed from Python or named as
``--encoder=module:function``, with the preprocessing it expects applied inside the model.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import json

import keras
import tensorflow as tf

from patchvae_tf import workdir
from patchvae_tf.config import KERAS_MODEL_PREFIX, ModelConfig
from patchvae_tf.config.training import is_function_name
from patchvae_tf.errors import UserError
from patchvae_tf.pixels import to_pixels


def import_function(name: str, flag: str = "--encoder"):
    """The callable ``module:function`` names (a dotted path after the colon is followed);
    UserError naming the flag when it cannot be imported.
    """
    if not is_function_name(name):
        raise UserError(f"{flag}={name!r} is not of the form module:function")
    module_name, _, path = name.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{flag}={name!r}: cannot import {module_name!r} ({e})") from None
    for part in path.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{flag}={name!r}: {module_name!r} has no {path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{flag}={name!r} is a {type(obj).__name__}, not a function")
    return obj


def function_name(fn) -> str | None:
    """``module:qualname`` of a function that importing that name gives back, else None
    (a lambda, a function defined in __main__ or inside another).
    """
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    name = f"{module}:{qualname}"
    try:
        return name if is_function_name(name) and import_function(name) is fn else None
    except UserError:
        return None


@keras.saving.register_keras_serializable(package="patchvae_tf")
class Backbone(keras.layers.Layer):
    """A Keras model mapping images [B, H, W, 3] to a feature map [B, H/s, W/s, D], as phi.

    ``network``: the keras.Model (or its Keras serialization). ``preprocessing``: "" (the
    network gets the autoencoder's input space, as the built-in encoders do) or
    ``module:function`` applied to pixels [B, H, W, 3] in [0, 255] (keras.applications'
    ``preprocess_input``, which those models do not carry), so exports still take pixels.
    """

    def __init__(self, network, preprocessing: str = "", **kwargs):
        # Float32 around the network: the preprocessing runs on full-precision pixels, and
        # a network built under a mixed policy casts its own inputs.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(copy.deepcopy(network))
        if not isinstance(network, keras.Model):
            raise ValueError(
                "`network` must be a keras.Model mapping images to a feature map. "
                f"Received: network={type(network).__name__}"
            )
        if preprocessing and not is_function_name(preprocessing):
            raise ValueError(
                f"`preprocessing` must be '' or 'module:function'. Received: {preprocessing!r}"
            )
        self.network, self.preprocessing = network, preprocessing
        self._preprocess = (
            import_function(preprocessing, "preprocessing") if preprocessing else None
        )
        channels = network.output_shape[-1] if hasattr(network, "output_shape") else None
        self.channels = channels
        # One stage: evaluate.py's finetuning freezes all of it or none.
        self.stages = [network]

    @property
    def takes_pixels(self) -> bool:
        """Whether call wants [-1, 1] pixels (to preprocess itself) rather than the input space."""
        return self._preprocess is not None

    def call(self, x, training=None):
        """X [B, H, W, 3]: [-1, 1] pixels with preprocessing, else the input space."""
        if self._preprocess is not None:
            x = self._preprocess(to_pixels(x))
        return self.network(x, training=training)

    def feature_scale(self, image_size: int) -> int:
        """How many times the network downsamples image_size-square images: a power of two
        >= 2 that divides image_size (what the heads, the decoder and the grid need), else
        UserError naming the feature map's shape.
        """
        out = self.network(tf.zeros([1, image_size, image_size, 3]), training=False)
        if len(out.shape) != 4:
            raise UserError(
                f"the encoder maps [1, {image_size}, {image_size}, 3] images to shape "
                f"{list(out.shape)}; expected a feature map [1, h, w, channels]"
            )
        h, w, channels = int(out.shape[1]), int(out.shape[2]), int(out.shape[3])
        scale = image_size // h if h else 0
        if h != w or scale * h != image_size or scale < 2 or scale & (scale - 1):
            raise UserError(
                f"the encoder maps {image_size}-pixel images to a {h} x {w} feature map; the "
                "decoder needs a square map 1/2, 1/4, 1/8... of the image's side (try another "
                "--image_size or cut the network at another layer)"
            )
        self.channels = channels
        return scale

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "preprocessing": self.preprocessing,
        }


def build(encoder: str, preprocessing: str = "") -> Backbone:
    """The backbone a config's --encoder names: ``module:function`` imported and called, or
    a Keras model passed from Python (``keras.Model:<digest>``), as training registered it or
    as its workdir's backbone.json describes it.
    """
    if encoder.startswith(KERAS_MODEL_PREFIX):
        entry = workdir.saved_backbone(encoder)
        if entry is None:
            raise UserError(
                f"--encoder={encoder!r} is a Keras model passed from Python; open its workdir "
                f"(patchvae_tf.load, evaluate.py, python -m export), which holds it as "
                f"{workdir.BACKBONE_FILE}"
            )
        # A copy: Keras's deserialization empties the nested configs it reads.
        return entry() if callable(entry) else Backbone.from_config(copy.deepcopy(entry))
    made = import_function(encoder)()
    if not isinstance(made, keras.Model):
        raise UserError(
            f"--encoder={encoder!r} returned a {type(made).__name__}; expected a keras.Model "
            "mapping images to a feature map"
        )
    return Backbone(made, preprocessing, name="encoder")


def _mirrored_check() -> None:
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        raise UserError(
            f"a keras.Model object cannot be copied to the {strategy.num_replicas_in_sync} "
            "replicas of this strategy; pass a function that builds it (encoder=make_backbone), "
            "which training calls inside the strategy's scope"
        )


def register(encoder, preprocessing=None) -> tuple[str, str, Backbone]:
    """(--encoder, --encoder_preprocessing, a built Backbone) for a backbone passed from
    Python: a keras.Model or a function building one, with its preprocessing (a function or
    ``module:function``).

    A function that imports back from its name is recorded by that name; anything else as
    ``keras.Model:<digest>``, whose Keras serialization goes into the workdir
    (``save``) and which builds in this process from the object itself.
    """
    pre = _preprocessing_name(preprocessing)
    if isinstance(encoder, str):
        return encoder, pre, build(encoder, pre)
    if isinstance(encoder, keras.Model):
        network = encoder

        def make() -> Backbone:
            _mirrored_check()
            return Backbone(network, pre, name="encoder")
    elif callable(encoder):
        name = function_name(encoder)
        if name:
            return name, pre, build(name, pre)

        def make() -> Backbone:
            made = encoder()
            if not isinstance(made, keras.Model):
                raise UserError(
                    f"the encoder function returned a {type(made).__name__}; expected a "
                    "keras.Model mapping images to a feature map"
                )
            return Backbone(made, pre, name="encoder")
    else:
        raise UserError(
            f"encoder must be a keras.Model, a function building one or 'module:function'; "
            f"got a {type(encoder).__name__}"
        )
    built = make()
    text = json.dumps(built.get_config(), sort_keys=True, default=str)
    spec = KERAS_MODEL_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:12]
    workdir.remember_backbone(spec, make)
    return spec, pre, built


def _preprocessing_name(preprocessing) -> str:
    if preprocessing is None or preprocessing == "":
        return ""
    if isinstance(preprocessing, str):
        # Under the name the function gives itself, so a re-export's name and the
        # function's own name (keras.applications... is keras.src.applications...) agree.
        fn = import_function(preprocessing, "--encoder_preprocessing")
        return function_name(fn) or preprocessing
    name = function_name(preprocessing) if callable(preprocessing) else None
    if not name:
        given = getattr(preprocessing, "__qualname__", preprocessing)
        raise UserError(
            "preprocessing must be a module-level function (such as "
            "keras.applications.resnet_v2.preprocess_input) or 'module:function', so a loaded "
            f"model can import it again; got {given!r}"
        )
    return name


def matched(model: ModelConfig, backbone: Backbone | None = None) -> ModelConfig:
    """Model with --scale set to what its custom encoder downsamples (built-in encoders:
    model unchanged); says so when that differs from the given --scale.
    """
    if not model.custom_encoder:
        return model
    backbone = backbone or build(model.encoder, model.encoder_preprocessing)
    scale = backbone.feature_scale(model.image_size)
    if scale != model.scale:
        print(
            f"--encoder={model.encoder} maps {model.image_size}-pixel images to a "
            f"{model.image_size // scale}-cell grid: --scale={scale} (was {model.scale})"
        )
    return dataclasses.replace(model, scale=scale)


def save(path: str, backbone: Backbone) -> None:
    """Writes the backbone's Keras serialization as the workdir's backbone.json."""
    workdir.write_text_atomic(path, json.dumps(backbone.get_config(), indent=1, default=str))
