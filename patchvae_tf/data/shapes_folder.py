"""Writes the synthetic shapes as a labelled image folder, the layout --dataset=folder:PATH reads:

    python -m patchvae_tf.data.shapes_folder --out=data/shapes_folder

OUT/train/CLASS/NNNNNN.png and OUT/test/CLASS/NNNNNN.png, CLASS the label's name (circle,
triangle, square for --label=largest; one_kind, two_kinds, three_kinds for kinds), the same
number of each class. The images are ones --dataset=shapes renders with the same seed and
texture (NNNNNN is the index), so a recognizer on a folder of them meets images of the kind
its encoder was trained on; the test split's are ones training never saw.
"""

from __future__ import annotations

import argparse
import os
import sys

from patchvae_tf.config import SHAPES_LABELS, TEXTURE_CONTRAST
from patchvae_tf.pixels import to_pixels


def write_folder(
    out: str,
    train_per_class: int = 1000,
    test_per_class: int = 200,
    image_size: int = 32,
    seed: int = 0,
    texture: bool = True,
    label: str = "kinds",
) -> dict[str, dict[str, int]]:
    """Renders shapes into out as PNGs, the same number of each class per split (the first
    ones of each class in the split's order), and returns split -> class -> count.

    Balanced, so that always answering one class scores 1 / classes. The defaults are
    configs/shapes.cfg's images and label (the default run's encoder).
    """
    import tensorflow as tf

    from patchvae_tf.data import shapes

    if label not in SHAPES_LABELS:
        raise ValueError(f"`label` must be one of {SHAPES_LABELS}. Received: label={label!r}")
    names = shapes.CLASSES if label == "largest" else shapes.KIND_NAMES
    counts: dict[str, dict[str, int]] = {}
    for split, quota in (("train", train_per_class), ("test", test_per_class)):
        counts[split] = dict.fromkeys(names, 0)
        for name in names:
            os.makedirs(os.path.join(out, split, name), exist_ok=True)
        # The rarest class (three kinds of shape in one image) is about 1 in 14 images.
        limit = quota * len(names) * _MAX_DRAWS_PER_IMAGE
        ds = shapes.shapes_dataset(
            split, limit, image_size, seed, texture=texture, contrast=TEXTURE_CONTRAST, label=label
        )
        for i, ex in enumerate(ds):
            name = names[int(ex["label"])]
            if counts[split][name] < quota:
                pixels = tf.cast(tf.round(to_pixels(ex["image"])), tf.uint8)
                path = os.path.join(out, split, name, f"{i:06d}.png")
                tf.io.write_file(path, tf.io.encode_png(pixels))
                counts[split][name] += 1
            if min(counts[split].values()) >= quota:
                break
        short = {n: c for n, c in counts[split].items() if c < quota}
        if short:
            raise ValueError(f"{split}: {limit} renders gave too few of {short}")
    return counts


# Renders per image written, at most: enough for the rarest class's share.
_MAX_DRAWS_PER_IMAGE = 10


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a new directory")
    parser.add_argument("--train_per_class", type=int, default=1000)
    parser.add_argument("--test_per_class", type=int, default=200)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="configs/shapes.cfg's is 0")
    parser.add_argument("--label", default="kinds", choices=SHAPES_LABELS)
    parser.add_argument("--no_texture", action="store_true", help="flat shapes")
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        print(f"error: --out={args.out!r} exists; give a new directory", file=sys.stderr)
        return 2
    if min(args.train_per_class, args.test_per_class, args.image_size) <= 0:
        print("error: --train_per_class, --test_per_class and --image_size must be positive",
              file=sys.stderr)  # fmt: skip
        return 2
    counts = write_folder(
        args.out, args.train_per_class, args.test_per_class, args.image_size, args.seed,
        not args.no_texture, args.label,
    )  # fmt: skip
    for split, per_class in counts.items():
        print(f"{split}: " + ", ".join(f"{n} {c}" for c, n in per_class.items()))
    print(f"wrote {args.out} (--dataset=folder:{args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
