"""Valid images at the edges of the input range, for int8 calibration and the int8 gate."""

from __future__ import annotations

import numpy as np

from export import parity

# Uniform images: black, mid-grey and saturated, and the brightness where int8 failed.
UNIFORM_LEVELS = (0.0, 128.0, 200.0, 255.0)


def stress_images(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Named sets of float32 pixels [k, S, S, 3] in [0, 255] from images (the same layout):

    - uniform: one image per UNIFORM_LEVELS value;
    - white_background / black_background: each image with its background (the pixels
      equal to its corner's colour) set to 255 / 0, so shapes sit on white or black;
    - bright / dark: each image's contrast squeezed into 200..255 / 0..55;
    - noise: uniform noise over 0..255, and over 200..255.
    """
    images = np.asarray(images, np.float32)
    k, s = len(images), images.shape[1]
    rng = np.random.default_rng(seed)
    corner = images[:, :1, :1, :]
    background = np.all(np.abs(images - corner) < 1.0, axis=-1, keepdims=True)
    return {
        "uniform": np.stack([np.full((s, s, 3), v, np.float32) for v in UNIFORM_LEVELS]),
        "white_background": np.where(background, 255.0, images).astype(np.float32),
        "black_background": np.where(background, 0.0, images).astype(np.float32),
        "bright": (200.0 + images * (55.0 / 255.0)).astype(np.float32),
        "dark": (images * (55.0 / 255.0)).astype(np.float32),
        "noise": np.concatenate(
            [
                rng.uniform(0.0, 255.0, (max(k // 2, 1), s, s, 3)),
                rng.uniform(200.0, 255.0, (max(k // 2, 1), s, s, 3)),
            ]
        ).astype(np.float32),
    }


def stack(sets: dict[str, np.ndarray]) -> np.ndarray:
    """All the sets' images in one array, in the dict's order."""
    return np.concatenate(list(sets.values()))


def agreement(float_run, int8_run, sets: dict) -> dict:
    """Per set: the int8 outputs' agreement with float32 and how many int8 values are not
    finite, or the runtime's error (which the gate refuses).
    """
    out = {}
    for name, batch in sets.items():
        try:
            got = int8_run(batch)
        except Exception as e:  # a runtime refusing to run the model is the finding
            out[name] = {"error": " ".join(str(e).split())[:300]}
            continue
        out[name] = {
            "agreement": parity.agreement(float_run(batch), got),
            "non_finite": int(sum(np.sum(~np.isfinite(v)) for v in got.values())),
        }
    return out
