"""Writes the synthetic shapes as a labelled image folder, the layout --dataset=folder:PATH reads:

    python -m patchvae_tf.data.shapes_folder --out=data/shapes_folder

OUT/train/CLASS/NNNNNN.png and OUT/test/CLASS/NNNNNN.png, CLASS the label's name (circle,
triangle, square for --label=largest; one_kind, two_kinds, three_kinds for kinds). The images
are the ones --dataset=shapes renders with the same seed and texture, so a recognizer on a
folder of them meets the images its encoder was trained on (train) and never saw (test).
"""

from __future__ import annotations

import argparse
import os
import sys

from patchvae_tf.config import SHAPES_LABELS, TEXTURE_CONTRAST


def write_folder(
    out: str,
    train_images: int = 3000,
    test_images: int = 600,
    image_size: int = 32,
    seed: int = 0,
    texture: bool = True,
    label: str = "kinds",
) -> dict[str, dict[str, int]]:
    """Renders the shapes of both splits into out as PNGs; returns split -> class -> count.

    The defaults are configs/shapes.cfg's images and label (the default run's encoder).
    """
    import tensorflow as tf

    from patchvae_tf.data import shapes

    if label not in SHAPES_LABELS:
        raise ValueError(f"`label` must be one of {SHAPES_LABELS}. Received: label={label!r}")
    names = shapes.CLASSES if label == "largest" else shapes.KIND_NAMES
    counts: dict[str, dict[str, int]] = {}
    for split, size in (("train", train_images), ("test", test_images)):
        counts[split] = dict.fromkeys(names, 0)
        for name in names:
            os.makedirs(os.path.join(out, split, name), exist_ok=True)
        ds = shapes.shapes_dataset(
            split, size, image_size, seed, texture=texture, contrast=TEXTURE_CONTRAST, label=label
        )
        for i, ex in enumerate(ds):
            pixels = tf.cast(tf.round((ex["image"] + 1.0) * 127.5), tf.uint8)
            name = names[int(ex["label"])]
            path = os.path.join(out, split, name, f"{i:06d}.png")
            tf.io.write_file(path, tf.io.encode_png(pixels))
            counts[split][name] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a new directory")
    parser.add_argument("--train_images", type=int, default=3000)
    parser.add_argument("--test_images", type=int, default=600)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="configs/shapes.cfg's is 0")
    parser.add_argument("--label", default="kinds", choices=SHAPES_LABELS)
    parser.add_argument("--no_texture", action="store_true", help="flat shapes")
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        print(f"error: --out={args.out!r} exists; give a new directory", file=sys.stderr)
        return 2
    if min(args.train_images, args.test_images, args.image_size) <= 0:
        print("error: --train_images, --test_images and --image_size must be positive",
              file=sys.stderr)  # fmt: skip
        return 2
    counts = write_folder(
        args.out, args.train_images, args.test_images, args.image_size, args.seed,
        not args.no_texture, args.label,
    )  # fmt: skip
    for split, per_class in counts.items():
        print(f"{split}: " + ", ".join(f"{n} {c}" for c, n in per_class.items()))
    print(f"wrote {args.out} (--dataset=folder:{args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
