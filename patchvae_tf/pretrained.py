"""patchvae_tf.load(): a trained workdir or an export directory as one object that encodes."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

from patchvae_tf.data import image_limits, source
from patchvae_tf.errors import UserError
from patchvae_tf.export_layout import GROUP_IN_MODEL, REPORT, SAVED_MODEL
from patchvae_tf.pixels import to_model, to_pixels
from patchvae_tf.workdir import CONFIG_FILE

_REPORT_IN_MODEL = os.path.join(GROUP_IN_MODEL, REPORT)
_SERVING = "serving_default"
_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: as the training pipeline reads files (source.to_rgb)
EXPECTED = (
    "a batch [batch, height, width, 1 | 3 | 4] of uint8 pixels or float pixels in [0, 255], "
    "a list (or other iterable) of such images of any sizes, of JPEG / PNG file paths or of "
    "JPEG / PNG file contents (bytes)"
)


def load(path: str, batch_size: int = 64) -> Pretrained:
    """The model at path: a training workdir (its config.json and latest checkpoint) or an
    export directory of ``python -m export`` (or one SavedModel version inside it).

    From a workdir, ``encode``, ``reconstruct`` and ``sample`` run the Keras model; from an
    export directory, ``encode`` runs the SavedModel and needs neither the training data nor
    the checkpoint. ``batch_size`` images are preprocessed and encoded at a time.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"patchvae_tf.load: {path!r} is not a directory")
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        from patchvae_tf.recognition import recognizer

        if recognizer.is_recognizer(path):
            return Pretrained.from_recognizer(path, batch_size)
        return Pretrained.from_workdir(path, batch_size)
    return Pretrained.from_export(path, batch_size)


def _saved_model_dir(path: str) -> tuple[str, dict]:
    """(SavedModel directory, its export report) of an export dir or a version directory."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path, _read_json(os.path.join(path, _REPORT_IN_MODEL))
    report = _read_json(os.path.join(path, REPORT))
    root = os.path.join(path, SAVED_MODEL)
    versions = (
        sorted(int(v) for v in os.listdir(root) if v.isdigit()) if os.path.isdir(root) else []
    )
    version = report.get("version") or (versions[-1] if versions else None)
    if version is None:
        raise ValueError(
            f"patchvae_tf.load: {path!r} is neither a training workdir (no {CONFIG_FILE}) nor "
            f"an export directory (no {SAVED_MODEL}/<version>/saved_model.pb)"
        )
    version_dir = os.path.join(root, str(version))
    if not os.path.isfile(os.path.join(version_dir, "saved_model.pb")):
        raise ValueError(
            f"patchvae_tf.load: export {path!r} has no SavedModel for version {version} "
            "(exported without saved_model in --formats?)"
        )
    return version_dir, report or _read_json(os.path.join(version_dir, _REPORT_IN_MODEL))


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class Pretrained:
    """A trained PatchVAE (or VAE) ready to encode images; build it with ``load``.

    Attributes: ``image_size`` (the model's input side S), ``outputs`` (name -> shape with
    batch None), ``config`` and ``model`` (a workdir's Config and restored Keras model;
    None from an export), ``step`` (the checkpoint's training step).
    """

    def __init__(self, encode_fn, image_size, outputs, *, batch_size, config=None, model=None,
                 step=None, path="", limits=image_limits.DEFAULT, classify_fn=None,
                 class_names=None):  # fmt: skip
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"`batch_size` must be a positive integer. Received: {batch_size!r}")
        self._encode_fn = encode_fn
        # The size limits of the image signatures: encoded files are refused from their
        # header, decoded arrays from their shape, before anything is resized.
        self.limits = limits
        self.image_size, self.outputs, self.batch_size = image_size, outputs, batch_size
        self.config, self.model, self.step, self.path = config, model, step, path
        # A recognizer's: pixels [b, S, S, 3] in [0, 255] -> probabilities [b, classes].
        self._classify_fn = classify_fn
        self.class_names = None if class_names is None else tuple(class_names)

    @classmethod
    def from_workdir(cls, workdir: str, batch_size: int = 64) -> Pretrained:
        from patchvae_tf.config import load_config
        from patchvae_tf.evaluation.setup import restore_model

        try:
            cfg = load_config(os.path.join(workdir, CONFIG_FILE))
            # config.json records where the run was trained; the workdir may have moved since.
            cfg = cfg.replace(train=dataclasses.replace(cfg.train, workdir=workdir))
            model, step = restore_model(cfg)
        except UserError as e:
            raise ValueError(str(e)) from None
        return cls._of_model(model, cfg, step, workdir, batch_size)

    @classmethod
    def from_recognizer(cls, workdir: str, batch_size: int = 64) -> Pretrained:
        """A train_classifier.py workdir: classify with its classifier, encode with its
        (possibly finetuned) encoder.
        """
        from patchvae_tf.recognition import recognizer

        try:
            rec = recognizer.restore(workdir)
        except UserError as e:
            raise ValueError(str(e)) from None
        clf = rec.classifier
        probabilities = tf.function(
            lambda x: clf.outputs(x)["probabilities"], reduce_retracing=True
        )
        return cls._of_model(
            clf.model,
            rec.encoder_config,
            rec.encoder_step,
            workdir,
            batch_size,
            classify_fn=lambda pixels: probabilities(to_model(pixels)),
            class_names=rec.class_names,
        )

    @classmethod
    def _of_model(cls, model, cfg, step, path: str, batch_size: int, **classify) -> Pretrained:
        """A restored Keras model of training config cfg, encoding in inference mode under the
        image limits cfg's data section sets; classify: a recognizer's classify_fn and
        class_names.
        """
        encode = tf.function(lambda x: model.encode(x, training=False), reduce_retracing=True)
        outputs = {k: [None, *v.shape[1:]] for k, v in encode(_blank(model.image_size)).items()}
        return cls(
            lambda pixels: encode(to_model(pixels)),
            model.image_size,
            outputs,
            batch_size=batch_size,
            config=cfg,
            model=model,
            step=step,
            path=path,
            limits=image_limits.ImageLimits(cfg.data.max_image_pixels, cfg.data.max_image_aspect),
            **classify,
        )

    @classmethod
    def from_export(cls, export_dir: str, batch_size: int = 64) -> Pretrained:
        saved_model, report = _saved_model_dir(export_dir)
        loaded = tf.saved_model.load(saved_model)
        serve = loaded.signatures[_SERVING]
        size = (report.get("model") or {}).get("image_size")
        if not size:
            raise ValueError(
                f"patchvae_tf.load: {saved_model!r} has no {REPORT} naming its image size"
            )
        outputs = {k: [None, *v.shape[1:]] for k, v in serve(images=_blank(size)).items()}

        names = report.get("class_names") if report.get("kind") == "recognizer" else None
        if names:  # a recognizer's serving_default: its encoder gives only the features
            outputs = {"features": outputs["features"]}

        def encode(pixels):
            out = serve(images=pixels)
            return {k: out[k] for k in outputs}

        def classify(pixels):
            return serve(images=pixels)["probabilities"]

        pretrained = cls(
            encode,
            size,
            outputs,
            batch_size=batch_size,
            step=report.get("step"),
            path=saved_model,
            # The limits the export's signatures were built with.
            limits=image_limits.ImageLimits.from_dict(report["input"]["limits"]),
            classify_fn=classify if names else None,
            class_names=names,
        )
        pretrained._loaded = loaded  # the signature's variables live as long as the module
        return pretrained

    # --- inputs -----------------------------------------------------------------------

    def _chunks(self, images) -> Iterator[tf.Tensor]:
        """Float32 pixels [b, S, S, 3] in [0, 255], resized and centre-cropped as in training,
        batch_size images at a time (file paths are read one chunk at a time).
        """
        items, start = iter(_items(images)), 0
        while chunk := list(itertools.islice(items, self.batch_size)):
            yield tf.stack([self._prepare(item, start + i) for i, item in enumerate(chunk)])
            start += len(chunk)
        if not start:
            raise ValueError(f"expected {EXPECTED}; got an empty batch")

    def _prepare(self, item, index: int) -> tf.Tensor:
        if isinstance(item, (str, os.PathLike)):
            item = _read_file(os.fspath(item), self.limits)
        elif isinstance(item, bytes):
            item = _decode_bytes(item, index, self.limits)
        image = _check_image(item, index, self.limits)
        # source.preprocess_image scales to [-1, 1]; the encoders take 0..255 pixels, as the
        # SavedModel does, so both kinds of model see the same numbers.
        unit = source.preprocess_image(source.to_rgb(tf.constant(image)), self.image_size)
        return to_pixels(unit)

    # --- what a researcher calls ----------------------------------------------------------

    def encode(self, images) -> dict[str, np.ndarray]:
        """Images -> {"occurrence" [B, h, w, N] (q_occ), "appearance" [B, N, L] (posterior
        means), "features" [B, D] (pooled encoder features)} as NumPy arrays; a VAE gives
        "appearance" [B, N*L] and "features".

        images: a NumPy array or tensor [B, H, W, C] (C = 1, 3 or 4) of uint8 pixels or
        float pixels in [0, 255], a list of such images [H, W, C] of any sizes, a list of
        JPEG / PNG file paths or of JPEG / PNG files' bytes; any iterable of those (a
        generator of paths, say) is read batch_size at a time. Each image is resized
        (shorter side to S) and centre-cropped as in training. Files are held to
        ``self.limits`` from their header before they are decoded, arrays by their shape, as
        the SavedModel's image signatures are. Raises ValueError naming what was received
        and what is expected.
        """
        parts = [
            {k: v.numpy() for k, v in self._encode_fn(c).items()} for c in self._chunks(images)
        ]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def classify(self, images) -> dict[str, np.ndarray]:
        """Images (as ``encode`` takes them) -> {"class_names" [B] (str), "classes" [B] (int64
        indices into ``class_names``), "probabilities" [B, classes] (float32)} of a recognizer
        (a train_classifier.py workdir or its export). Raises ValueError as ``encode`` does,
        and for a model that is not a recognizer.
        """
        if self._classify_fn is None:
            raise ValueError(
                f"classify needs a recognizer: {self.path!r} is an encoder; train one with "
                "train_classifier.py and load its workdir or its export"
            )
        probabilities = np.concatenate(
            [np.asarray(self._classify_fn(c), np.float32) for c in self._chunks(images)]
        )
        classes = np.argmax(probabilities, axis=1).astype(np.int64)
        names = np.array(self.class_names, dtype=object)[classes].astype(str)
        return {"class_names": names, "classes": classes, "probabilities": probabilities}

    def _workdir_model(self, what: str):
        if self.model is None:
            raise ValueError(
                f"{what} needs the decoder: load a training workdir, not the export {self.path!r}"
            )
        return self.model

    def reconstruct(self, images, seed: int = 0) -> np.ndarray:
        """Images (as ``encode`` takes them) -> reconstructions [B, S, S, 3] float32 pixels in
        [0, 255]; the latents are sampled at the smallest temperature, from ``seed``.
        """
        model = self._workdir_model("reconstruct")
        out = []
        for i, chunk in enumerate(self._chunks(images)):
            seeds = tf.constant([seed, i], tf.int32)
            decoded = model(to_model(chunk), training=False, seed=seeds)["reconstruction"]
            out.append(_to_pixels(decoded))
        return np.concatenate(out)

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """N images [n, S, S, 3] float32 pixels in [0, 255] decoded from the prior; seed
        (when given) sets Keras's global random seed first, for repeatable samples.
        """
        model = self._workdir_model("sample")
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"`n` must be a positive integer. Received: n={n!r}")
        if seed is not None:
            import keras

            keras.utils.set_random_seed(seed)
        return np.concatenate(
            [
                _to_pixels(model.sample(min(self.batch_size, n - i)))
                for i in range(0, n, self.batch_size)
            ]
        )

    def __repr__(self) -> str:
        kind = "workdir" if self.model is not None else "export"
        if self.class_names is not None:
            kind = f"recognizer {kind} of {len(self.class_names)} classes"
        return f"Pretrained({kind} {self.path!r}, image_size={self.image_size}, step={self.step})"


def _blank(size: int) -> tf.Tensor:
    return tf.zeros([1, size, size, 3])


def _to_pixels(unit: tf.Tensor) -> np.ndarray:
    return np.clip(to_pixels(unit.numpy()), 0.0, 255.0).astype(np.float32)


def _items(images) -> Iterable:
    """The images of a batch, list or other iterable, one per entry (read lazily from an
    iterator); refuses what encode cannot take.
    """
    if isinstance(images, (str, bytes, os.PathLike)):
        raise ValueError(f"expected {EXPECTED}; got one path {images!r} (wrap it in a list)")
    if isinstance(images, tf.Tensor):
        images = images.numpy()
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(f"expected {EXPECTED}; got an array of shape {images.shape}")
    if not isinstance(images, Iterable):
        raise ValueError(f"expected {EXPECTED}; got a {type(images).__name__}")
    return images


def _read_file(path: str, limits: image_limits.ImageLimits) -> np.ndarray:
    """A JPEG/PNG file -> uint8 [H, W, C]; its header is checked before it is read whole."""
    try:
        image_limits.check_file(path, limits)
    except image_limits.ImageTooLarge as e:
        raise ValueError(f"image file {path!r}: {e}") from None
    except (OSError, ValueError):
        pass  # said below, with the decoder's words for it
    try:
        image_limits.check_file(path, limits)
        with open(path, "rb") as f:
            blob = f.read()
        return tf.io.decode_image(blob, expand_animations=False).numpy()
    except (OSError, tf.errors.OpError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise ValueError(
            f"cannot read image file {path!r} ({reason}); expected a JPEG or PNG"
        ) from None


def _decode_bytes(blob: bytes, index: int, limits: image_limits.ImageLimits) -> np.ndarray:
    try:
        return image_limits.decode(blob, limits)
    except image_limits.ImageTooLarge as e:
        raise ValueError(f"image {index}: {e}") from None
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(
            f"cannot read image {index} ({str(e).splitlines()[0]}); expected a JPEG or PNG"
        ) from None


def _check_image(image, index: int, limits: image_limits.ImageLimits) -> np.ndarray:
    """One image [H, W, C] as a NumPy array, or ValueError naming image index and the fault."""
    array = np.asarray(image.numpy() if isinstance(image, tf.Tensor) else image)
    where = f"image {index}"
    if array.ndim != 3 or array.shape[-1] not in _CHANNELS or 0 in array.shape:
        raise ValueError(f"expected {EXPECTED}; {where} has shape {array.shape}")
    why = limits.refusal(array.shape[1], array.shape[0])
    if why:
        raise ValueError(f"{where}: {why}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected {EXPECTED}; {where} has dtype {array.dtype}")
    if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 255.0:
        raise ValueError(
            f"expected {EXPECTED}; {where} has values in [{array.min()}, {array.max()}]"
        )
    return array.astype(np.float32)
