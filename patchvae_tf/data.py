"""tf.data input pipelines: synthetic shapes, TFDS datasets and image folders, scaled to [-1, 1]."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf
from absl import logging

from patchvae_tf import positions, shapes
from patchvae_tf.config import DataConfig
from patchvae_tf.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FOLDER_PREFIX = "folder:"


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved dataset: how to read each split, and what it holds."""

    name: str
    num_classes: int | None
    has_masks: bool
    # split -> callable(input_context) -> unbatched dataset of dicts with "image" (and "label").
    readers: dict
    sizes: dict
    skipped: int = 0


def preprocess_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Any-size RGB image [h, w, 3] (uint8 or float 0..255) -> [S, S, 3] float in [-1, 1].

    Resizes the shorter side to S, then takes the centre S x S crop, as at serving.
    """
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    ratio = float(image_size) / tf.minimum(h, w)
    new_h = tf.maximum(image_size, tf.cast(tf.round(h * ratio), tf.int32))
    new_w = tf.maximum(image_size, tf.cast(tf.round(w * ratio), tf.int32))
    image = tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)
    top = (new_h - image_size) // 2
    left = (new_w - image_size) // 2
    image = image[top : top + image_size, left : left + image_size, :]
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return tf.clip_by_value(image, 0.0, 255.0) / 127.5 - 1.0


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """[h, w, 1|3|4] -> [h, w, 3]: grey is repeated, alpha dropped."""
    # With the channels known when traced (TFDS features say them), only one branch is
    # built: tf.case traces all, and grey's refuses a static 3-channel image.
    static = image.shape[-1]
    if static == 3:
        return image
    if static == 1:
        return tf.image.grayscale_to_rgb(image)
    if static == 4:
        return image[..., :3]
    channels = tf.shape(image)[-1]
    return tf.case(
        [
            (tf.equal(channels, 1), lambda: tf.image.grayscale_to_rgb(image)),
            (tf.equal(channels, 4), lambda: image[..., :3]),
            (tf.equal(channels, 2), lambda: tf.image.grayscale_to_rgb(image[..., :1])),
        ],
        default=lambda: image,
    )


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG bytes -> uint8 [h, w, 3]; palette, grey and RGBA become RGB."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


# --- folders ----------------------------------------------------------------


def _check_images(paths: list[str]) -> list[bool]:
    """Which files open as images; corrupt ones are skipped rather than failing training."""
    from PIL import Image  # Imported here: only folder datasets need it.

    def ok(path: str) -> bool:
        try:
            with Image.open(path) as im:
                im.verify()
            return True
        except Exception:  # PIL raises many types for a bad file.
            return False

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(ok, paths))


def _list_class_folder(root: str) -> list[tuple[str, str]]:
    """[(relative path, class name)] of images under root/CLASS/..."""
    items = []
    for cls in sorted(os.listdir(root)):
        cdir = os.path.join(root, cls)
        if not os.path.isdir(cdir):
            continue
        for dirpath, _, files in os.walk(cdir):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    rel = os.path.relpath(os.path.join(dirpath, f), root)
                    items.append((rel, cls))
    return items


def _read_split_file(path: str, root: str) -> list[tuple[str, str]]:
    if not os.path.isfile(path):
        raise UserError(f"split file {path!r} does not exist")
    with open(path) as f:
        rels = [line.strip() for line in f if line.strip()]
    if not rels:
        raise UserError(f"split file {path!r} lists no images")
    missing = [r for r in rels if not os.path.isfile(os.path.join(root, r))]
    if missing:
        raise UserError(
            f"split file {path!r} names {len(missing)} missing image(s) under {root!r}, "
            f"first {missing[0]!r}"
        )
    return [(r, r.replace("\\", "/").split("/")[0]) for r in rels]


def _folder_source(cfg: DataConfig) -> Source:
    root = cfg.dataset[len(FOLDER_PREFIX) :]
    if not root or not os.path.isdir(root):
        raise UserError(f"image folder {root!r} does not exist")
    if cfg.train_split_file or cfg.test_split_file:
        if not (cfg.train_split_file and cfg.test_split_file):
            raise UserError("give both --train_split_file and --test_split_file, or neither")
        splits = {
            "train": _read_split_file(cfg.train_split_file, root),
            "test": _read_split_file(cfg.test_split_file, root),
        }
        if cfg.train_split == "all_but_test":
            # The authors' Indoor67 "allminustest": every image the test file does not list.
            test = {os.path.normpath(rel) for rel, _ in splits["test"]}
            splits["train"] = [
                (rel, c) for rel, c in _list_class_folder(root) if os.path.normpath(rel) not in test
            ]
        bases = {"train": root, "test": root}
    elif os.path.isdir(os.path.join(root, "train")):
        bases = {s: os.path.join(root, s) for s in ("train", "test")}
        splits = {s: _list_class_folder(b) if os.path.isdir(b) else [] for s, b in bases.items()}
    else:
        raise UserError(
            f"image folder {root!r} has no train/ subfolder; give --train_split_file and "
            "--test_split_file for a folder of class subfolders"
        )
    if not splits["train"]:
        raise UserError(f"image folder {root!r} holds no JPEG or PNG training images")
    classes = sorted({c for items in splits.values() for _, c in items})
    index = {c: i for i, c in enumerate(classes)}
    readers, sizes, skipped = {}, {}, 0
    for split, items in splits.items():
        paths = [os.path.join(bases[split], rel) for rel, _ in items]
        good = _check_images(paths)
        bad = [p for p, g in zip(paths, good, strict=True) if not g]
        if bad:
            logging.warning("skipping %d corrupt image(s) in %s, e.g. %s", len(bad), split, bad[0])
            print(f"skipped {len(bad)} corrupt image(s) in the {split} split, e.g. {bad[0]}")
        skipped += len(bad)
        kept = [(p, index[c]) for p, (_, c), g in zip(paths, items, good, strict=True) if g]
        if split == "train" and not kept:
            raise UserError(f"image folder {root!r}: every training image is corrupt")
        readers[split] = _folder_reader(kept, cfg.image_size)
        sizes[split] = len(kept)
    return Source(cfg.dataset, len(classes), False, readers, sizes, skipped)


def _folder_reader(items: list[tuple[str, int]], image_size: int):
    paths = [p for p, _ in items]
    labels = [label for _, label in items]

    def read(input_context=None, shuffle_seed=None, start=0):
        if shuffle_seed is not None:
            # Shuffle (and skip, on resume) file names rather than decoded images.
            names, classes = tf.constant(paths), tf.constant(labels)
            ds = positions.epoch_indices(len(paths), shuffle_seed, start, input_context)
            ds = ds.map(lambda i: (tf.gather(names, i), tf.gather(classes, i)))
        else:
            ds = tf.data.Dataset.from_tensor_slices((paths, labels))
            if input_context is not None:
                ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

        def load(path, label):
            image = decode_image(tf.io.read_file(path))
            return {"image": preprocess_image(image, image_size), "label": label}

        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        # A file that passed the header check but fails to decode is dropped, not fatal.
        return ds.ignore_errors(log_warning=True)

    return read


# --- TFDS -------------------------------------------------------------------


def _prepare_tfds(builder, cfg: DataConfig) -> None:
    """Downloads and prepares a TFDS dataset when --download asks; otherwise says how.

    Without --download nothing touches the network: offline, TFDS's own download retries
    for minutes before it fails.
    """
    where = f"--data_dir={cfg.data_dir!r}" if cfg.data_dir else "the default TFDS data_dir"
    manual = builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    if not cfg.download:
        how = (
            f"put its archives in {os.path.join(builder.data_dir_root, 'downloads', 'manual')}"
            " (see the TFDS catalogue), then pass --download to prepare it"
            if manual
            else "pass --download to fetch and prepare it (needs the network), or run "
            f"`tfds build {cfg.dataset}"
            + (f" --data_dir={cfg.data_dir}" if cfg.data_dir else "")
            + "` where the network is reachable and copy the result"
        )
        raise UserError(f"TFDS dataset {cfg.dataset!r} is not prepared in {where}: {how}")
    try:
        builder.download_and_prepare()
    except Exception as e:  # Network, checksum and manual-download errors alike.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"TFDS dataset {cfg.dataset!r} could not be prepared in {where}: {first}"
        ) from None


def _tfds_source(cfg: DataConfig) -> Source:
    import tensorflow_datasets as tfds  # Slow to import; only TFDS datasets need it.

    try:
        builder = tfds.builder(cfg.dataset, data_dir=cfg.data_dir)
    except Exception as e:  # TFDS raises DatasetNotFoundError and others.
        raise UserError(f"unknown --dataset {cfg.dataset!r}: {str(e).splitlines()[0]}") from None
    if not builder.is_prepared():
        _prepare_tfds(builder, cfg)
    info = builder.info
    # Split metadata is known once prepared (or from TFDS's bundled metadata); when it is
    # not, assume the usual "train" / "test" names.
    splits = list(info.splits.keys())
    test_split = next((s for s in ("test", "validation") if s in splits), "test")
    features = info.features
    label = features["label"] if "label" in features.keys() else None
    num_classes = getattr(label, "num_classes", None)

    def convert(ex):
        out = {"image": preprocess_image(to_rgb(ex["image"]), cfg.image_size)}
        out["label"] = tf.cast(ex["label"], tf.int32) if "label" in ex else -1
        return out

    def reader(split):
        def read(input_context=None, shuffle_seed=None, start=0):
            if shuffle_seed is not None:
                return _tfds_training_stream(
                    builder, split, cfg, input_context, shuffle_seed, start
                ).map(convert, num_parallel_calls=tf.data.AUTOTUNE)
            read_config = tfds.ReadConfig(input_context=input_context, try_autocache=False)
            ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
            return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

        return read

    sizes = {
        s: info.splits[name].num_examples if name in splits else None
        for s, name in (("train", "train"), ("test", test_split))
    }
    return Source(
        cfg.dataset,
        num_classes,
        False,
        {"train": reader("train"), "test": reader(test_split)},
        sizes,
    )


_TFDS_BLOCKS = 16  # contiguous slices of a pipeline's examples, interleaved at random


def _tfds_training_stream(builder, split, cfg, input_context, seed, start) -> tf.data.Dataset:
    """A TFDS split as an endless training stream, epoch e's order a function of (seed, e),
    beginning ``start`` examples in: a resumed run continues exactly where it stopped.

    Each input pipeline reads its own contiguous share of the examples, cut in up to 16
    slices; epoch e interleaves the slices in a seeded random order (as TFDS's shuffled
    files would be) and permutes each run of --shuffle_buffer examples, seeded by (seed, e)
    and the run. Images
    stay encoded until after the skip to ``start``: a resume reads the skipped records of
    its epoch (at most one epoch) but decodes none of them.
    """
    import tensorflow_datasets as tfds

    pid, num = 0, 1
    if input_context is not None:
        pid, num = input_context.input_pipeline_id, input_context.num_input_pipelines
    read_config = tfds.ReadConfig(try_autocache=False)

    def records(part):
        return builder.as_dataset(
            split=part,
            shuffle_files=False,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    if split in builder.info.splits.keys():
        size = builder.info.splits[split].num_examples
        lo, hi = pid * size // num, (pid + 1) * size // num
    else:  # no split metadata (tfds.testing.mock_data): count the records once, undecoded
        size = int(records(split).reduce(0, lambda n, _: n + 1))
        lo, hi = 0, len(range(pid, size, num))
    count = hi - lo
    if count == 0:
        raise UserError(
            f"TFDS dataset {cfg.dataset!r}: its {split} split of {size} examples cannot feed "
            f"{num} input pipelines"
        )
    if split in builder.info.splits.keys():
        blocks = min(_TFDS_BLOCKS, count)
        cuts = [lo + i * count // blocks for i in range(blocks + 1)]
        slices = [records(f"{split}[{a}:{b}]") for a, b in zip(cuts, cuts[1:], strict=False)]
    else:
        blocks, cuts, slices = 1, [lo, hi], [records(split).shard(num, pid)]
    sizes = [b - a for a, b in zip(cuts, cuts[1:], strict=False)]
    owner = tf.repeat(tf.range(blocks, dtype=tf.int64), sizes)

    keys = [k for k in ("image", "label") if k in builder.info.features.keys()]

    def epoch(key):
        order = tf.random.experimental.stateless_shuffle(owner, seed=key)
        ds = tf.data.Dataset.choose_from_datasets(
            slices, tf.data.Dataset.from_tensor_slices(order), stop_on_empty_dataset=False
        )
        ds = ds.map(lambda ex: {k: ex[k] for k in keys})
        # Each run of --shuffle_buffer examples is permuted with a stateless seed: a
        # shuffle buffer would take its seed from TF's global one under --deterministic.
        mixed = key[0] * 1_000_003 + key[1]

        def permute(i, window):
            n = tf.shape(window["image"], out_type=tf.int64)[0]
            perm = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([mixed, i]))
            return tf.data.Dataset.from_tensor_slices(
                {k: tf.gather(v, perm) for k, v in window.items()}
            )

        return ds.batch(cfg.shuffle_buffer).enumerate().flat_map(permute)

    image = builder.info.features["image"]

    def decode(ex):
        ex = dict(ex)
        ex["image"] = image.decode_example(ex["image"])
        return ex

    stream = positions.epochs(count, seed, start, epoch)
    return stream.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


# --- shapes -----------------------------------------------------------------


def _shapes_source(cfg: DataConfig, seed: int) -> Source:
    sizes = {"train": cfg.shapes_train_size, "test": cfg.shapes_test_size}

    def reader(split):
        def read(input_context=None, shuffle_seed=None, start=0):
            return shapes.shapes_dataset(
                split,
                sizes[split],
                cfg.image_size,
                seed,
                input_context,
                shuffle_seed,
                start,
                texture=cfg.shapes_texture,
                contrast=cfg.shapes_texture_contrast,
            )

        return read

    return Source("shapes", len(shapes.CLASSES), True, {s: reader(s) for s in sizes}, sizes)


def get_source(cfg: DataConfig, seed: int = 0) -> Source:
    """Resolves --dataset; raises UserError for unknown names and missing folders."""
    if cfg.dataset == "shapes":
        return _shapes_source(cfg, seed)
    if cfg.dataset.startswith(FOLDER_PREFIX):
        return _folder_source(cfg)
    return _tfds_source(cfg)


def input_dataset(
    source: Source,
    split: str,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool | None = None,
    flip: bool = False,
    start: int = 0,
) -> tf.data.Dataset:
    """Batched dataset of dicts {"image": [B, S, S, 3] in [-1, 1], "label": [B], ...}.

    ``batch_size`` is per input pipeline (per replica under a strategy). Training data is
    shuffled (by each reader, at its cheapest level: indices, file names, TFDS files),
    flipped if ``flip``, repeated and batched with drop_remainder so every step is whole.
    ``start``: training examples this pipeline already consumed (a resumed run); shapes and
    folders continue exactly there, flips included.
    """
    if training:
        ds = source.readers[split](input_context, seed, start)
    else:
        ds = source.readers[split](input_context, None)
    if training and flip and not source.has_masks:
        # Folder and TFDS images only: shapes carry masks that would need flipping too.

        def flip_image(position, ex):
            ex = dict(ex)
            key = positions.example_seed(seed, position, input_context)
            ex["image"] = tf.image.stateless_random_flip_left_right(ex["image"], seed=key)
            return ex

        ds = ds.enumerate(start).map(flip_image, num_parallel_calls=tf.data.AUTOTUNE)
    if repeat if repeat is not None else training:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)
