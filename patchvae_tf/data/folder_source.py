"""Image folders as a data source: class subfolders (or split files), each image checked
against the size limits before it is read.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf
from absl import logging

from patchvae_tf.config import DataConfig
from patchvae_tf.data import image_limits, positions
from patchvae_tf.data.source import Source, decode_image, preprocess_image
from patchvae_tf.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FOLDER_PREFIX = "folder:"


def limits_of(cfg: DataConfig) -> image_limits.ImageLimits:
    """The size limits training images are read under (--max_image_pixels, --max_image_aspect)."""
    return image_limits.ImageLimits(cfg.max_image_pixels, cfg.max_image_aspect)


def _check_images(paths: list[str], limits: image_limits.ImageLimits) -> list[str]:
    """Why each file cannot be read ("" when it can): corrupt files and files whose header
    is past the size limits are skipped rather than failing training. The header is checked
    first, so PIL never sees an image too large to decode.
    """
    from PIL import Image  # Imported here: only folder datasets need it.

    def why(path: str) -> str:
        try:
            image_limits.check_file(path, limits)
        except image_limits.ImageTooLarge as e:
            return str(e)
        except (image_limits.ImageRefused, OSError):
            return "corrupt"
        try:
            with Image.open(path) as im:
                im.verify()
            return ""
        except Exception:  # PIL raises many types for a bad file.
            return "corrupt"

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(why, paths))


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


def folder_source(cfg: DataConfig, image_size: int) -> Source:
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
    readers, sizes, skipped, labels = {}, {}, 0, {}
    limits = limits_of(cfg)
    for split, items in splits.items():
        paths = [os.path.join(bases[split], rel) for rel, _ in items]
        reasons = _check_images(paths, limits)
        corrupt = [p for p, r in zip(paths, reasons, strict=True) if r == "corrupt"]
        large = [(p, r) for p, r in zip(paths, reasons, strict=True) if r and r != "corrupt"]
        if corrupt:
            first = corrupt[0]
            n = len(corrupt)
            logging.warning("skipping %d corrupt image(s) in %s, e.g. %s", n, split, first)
            print(f"skipped {len(corrupt)} corrupt image(s) in the {split} split, e.g. {first}")
        if large:
            print(
                f"skipped {len(large)} image(s) in the {split} split that cannot be read within "
                f"--max_image_pixels / --max_image_aspect, e.g. {large[0][0]}: {large[0][1]}"
            )
        skipped += len(corrupt) + len(large)
        kept = [(p, index[c]) for p, (_, c), r in zip(paths, items, reasons, strict=True) if not r]
        if split == "train" and not kept:
            what = "corrupt" if corrupt and not large else "corrupt or past the size limits"
            raise UserError(f"image folder {root!r}: every training image is {what}")
        readers[split] = _folder_reader(kept, image_size, limits)
        sizes[split] = len(kept)
        labels[split] = [label for _, label in kept]
    return Source(
        cfg.dataset,
        len(classes),
        False,
        readers,
        sizes,
        skipped,
        class_names=tuple(classes),
        labels=labels,
    )


def _folder_reader(items: list[tuple[str, int]], image_size: int, limits):
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
            # The header was checked when the folder was listed; checked again here, a file
            # replaced since then cannot slip through.
            image = decode_image(tf.io.read_file(path), limits, "a training image")
            return {"image": preprocess_image(image, image_size), "label": label}

        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        # A file that passed the header check but fails to decode is dropped, not fatal.
        return ds.ignore_errors(log_warning=True)

    return read
