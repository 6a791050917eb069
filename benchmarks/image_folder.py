"""Writes an image folder of small JPEGs for the memory benchmark (--memory_folder):

    python -m benchmarks.image_folder --out=/tmp/folder100k --images=100000

FOLDER/train/cNN/*.jpg (10 classes) and a few test images, each a random arrangement of
coloured rectangles, so that every file is a real JPEG to decode, of a different size.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

CLASSES = 10


def _write(args) -> int:
    from PIL import Image

    out, split, start, stop, size = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        image = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(4, size // 2, 2)
            image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
        path = os.path.join(out, split, f"c{i % CLASSES:02d}", f"{i:07d}.jpg")
        Image.fromarray(image).save(path, quality=90)
    return stop - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--test_images", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        print(f"--out={args.out!r} exists; give a new directory", file=sys.stderr)
        return 2
    for split in ("train", "test"):
        for c in range(CLASSES):
            os.makedirs(os.path.join(args.out, split, f"c{c:02d}"))
    chunk = 2000
    jobs = [
        (args.out, "train", i, min(i + chunk, args.images), args.size)
        for i in range(0, args.images, chunk)
    ]
    jobs.append((args.out, "test", args.images, args.images + args.test_images, args.size))
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        written = sum(pool.map(_write, jobs))
    print(f"wrote {written} JPEGs under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
