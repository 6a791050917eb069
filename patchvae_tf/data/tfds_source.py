"""TFDS datasets as sources: offline-safe preparation and an exactly resumable training stream."""

from __future__ import annotations

import os

import tensorflow as tf

from patchvae_tf.config import DataConfig
from patchvae_tf.data import image_limits, positions
from patchvae_tf.data.source import Source, preprocess_image, to_rgb
from patchvae_tf.errors import UserError

# Part of the one line a training run stops with where no image of its TFDS split fits.
NONE_FIT = "no image of the training split fits"


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


def tfds_source(cfg: DataConfig, image_size: int) -> Source:
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
    test_split, unlabelled = _scoring_split(builder, splits, cfg.dataset)
    features = info.features
    label = features["label"] if "label" in features.keys() else None
    num_classes = getattr(label, "num_classes", None)

    def convert(ex):
        out = {"image": preprocess_image(to_rgb(ex["image"]), image_size)}
        out["label"] = tf.cast(ex["label"], tf.int32) if "label" in ex else -1
        return out

    def reader(split):
        def read(input_context=None, shuffle_seed=None, start=0):
            if shuffle_seed is not None:
                return _tfds_training_stream(
                    builder, split, cfg, input_context, shuffle_seed, start
                ).map(convert, num_parallel_calls=tf.data.AUTOTUNE)
            read_config = tfds.ReadConfig(input_context=input_context, try_autocache=False)
            ds = builder.as_dataset(
                split=split,
                shuffle_files=False,
                read_config=read_config,
                decoders={"image": tfds.decode.SkipDecoding()},
            )
            ds = ds.map(_checked_decoder(builder, cfg), num_parallel_calls=tf.data.AUTOTUNE)
            ds = ds.ignore_errors(log_warning=True).filter(lambda ex, fits: fits)
            return ds.map(lambda ex, fits: convert(ex), num_parallel_calls=tf.data.AUTOTUNE)

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
        unlabelled=unlabelled,
        class_names=tuple(getattr(label, "names", None) or ()),
    )


_LABEL_SAMPLE = 64  # labels read from a split to tell whether it is labelled


def _scoring_split(builder, splits: list, dataset: str) -> tuple[str, str]:
    """The split that recognition scores, and why none can if none can.

    The first of test and validation whose first labels are all >= 0: TFDS marks missing
    labels -1, and some test splits (places365_small's; imagenet2012's when prepared with
    its test archive) hold nothing else. With no such split, the test split is still read
    (training needs no labels) and the reason is returned for the evaluation to stop on.
    """
    import tensorflow_datasets as tfds

    names = [s for s in ("test", "validation") if s in splits] if splits else ["test"]
    if "validation" not in names and not splits:
        names.append("validation")  # no split metadata (mock data): try both names
    if not names:
        return "test", ""
    if "label" not in builder.info.features.keys():
        return names[0], ""
    found = []
    for name in names:
        try:
            ds = builder.as_dataset(
                split=name,
                shuffle_files=False,
                decoders={"image": tfds.decode.SkipDecoding()},
                read_config=tfds.ReadConfig(try_autocache=False),
            )
        except Exception:  # a split name without data
            continue
        labels = [int(ex["label"]) for ex in ds.take(_LABEL_SAMPLE)]
        if labels and min(labels) >= 0:
            return name, ""
        found.append(f"{name} ({'no examples' if not labels else 'labels -1, unlabelled'})")
    return names[0], (
        f"TFDS dataset {dataset!r} has no labelled split to score recognition on: "
        + ", ".join(found or names)
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

    pid, num = positions.pipeline(input_context)
    read_config = tfds.ReadConfig(try_autocache=False)

    def records(part):
        return builder.as_dataset(
            split=part,
            shuffle_files=False,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    known = split in builder.info.splits.keys()
    if known:
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
    if known:
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

    stream = positions.epochs(count, seed, start, epoch)
    # An image past the size limits is dropped, as a folder's is; the examples after it
    # move up by one, so a resume after a dropped image is off by that many.
    stream = stream.map(_checked_decoder(builder, cfg), num_parallel_calls=tf.data.AUTOTUNE)
    stream = stream.ignore_errors(log_warning=True)
    # The stream repeats forever: where no image fits, it would spin without a word. Two
    # epochs in a row dropped means none fits: between two images that fit, fewer lie.
    message = (
        f"TFDS dataset {cfg.dataset!r}: {NONE_FIT} --max_image_pixels={cfg.max_image_pixels} "
        f"and --max_image_aspect={cfg.max_image_aspect:g} (two epochs, {2 * count} images, "
        "in a row past them)"
    )

    def guard(run, element):
        run = tf.where(element[1], tf.constant(0, tf.int64), run + 1)
        with tf.control_dependencies([tf.debugging.Assert(run < 2 * count, [message])]):
            return tf.identity(run), element

    stream = stream.scan(tf.constant(0, tf.int64), guard)
    return stream.filter(lambda ex, fits: fits).map(lambda ex, fits: ex)


def _checked_decoder(builder, cfg: DataConfig):
    """A map function: an example whose image is still encoded -> (the example decoded by
    TFDS, True) once its JPEG/PNG header fits --max_image_pixels and --max_image_aspect, or
    (the example with an empty image, False) without decoding it, a warning printed.
    """
    image = builder.info.features["image"]
    limits = image_limits.ImageLimits(cfg.max_image_pixels, cfg.max_image_aspect)
    empty = [0, 0, image.shape[-1] or 3]

    def decode(ex):
        ex = dict(ex)
        size = image_limits.tf_header_size(ex["image"], "a TFDS image")
        fits = image_limits.tf_fits(size[0], size[1], limits)

        def skip():
            why = image_limits.tf_refusal(size[0], size[1], limits, "a TFDS image")
            with tf.control_dependencies([tf.print("warning: skipped", why)]):
                return tf.zeros(empty, image.dtype)

        ex["image"] = tf.cond(fits, lambda: image.decode_example(ex["image"]), skip)
        return ex, fits

    return decode
