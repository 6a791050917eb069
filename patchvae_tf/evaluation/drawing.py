"""The report's figures: labelled grids, occurrence and part-gallery figures, training
curves, and PNG writing.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from patchvae_tf.pixels import to_display, upsample_nearest
from patchvae_tf.workdir import write_bytes_atomic


def save_png(image: tf.Tensor | np.ndarray, path: str) -> None:
    """Writes [H, W, C] in [0, 1] as PNG (atomically: a reader never sees half a file)."""
    pixels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
    write_bytes_atomic(path, tf.io.encode_png(pixels).numpy())


class PartGallery:
    """Keeps, per part, the k images where it occurs most strongly, and where in each.

    Feed batches with ``add``; ``best(part)`` lists (q_occ, image, row, col), strongest
    first. Each image counts once per part (at its strongest cell), so a part's list holds
    k different images rather than k neighbouring cells of one.
    """

    def __init__(self, num_parts: int, k: int):
        self.num_parts, self.k = num_parts, k
        self.scores = [np.zeros([0], np.float32) for _ in range(num_parts)]
        self.images = [None] * num_parts
        self.cells = [np.zeros([0, 2], np.int64) for _ in range(num_parts)]

    def add(self, images, q_occ) -> None:
        """Adds a batch: images [B, H, W, 3] in [-1, 1], q_occ [B, h, w, N]."""
        images, q = np.asarray(images, np.float32), np.asarray(q_occ, np.float32)
        b, _, w, n = q.shape
        flat = q.reshape(b, -1, n)
        best = flat.max(axis=1)  # [B, N]
        where = flat.argmax(axis=1)  # [B, N]
        for part in range(n):
            top = np.argsort(-best[:, part], kind="stable")[: self.k]
            cells = np.stack([where[top, part] // w, where[top, part] % w], axis=-1)
            scores = np.concatenate([self.scores[part], best[top, part]])
            kept = self.images[part] if self.images[part] is not None else images[:0]
            pool = np.concatenate([kept, images[top]])
            cells = np.concatenate([self.cells[part], cells])
            keep = np.argsort(-scores, kind="stable")[: self.k]
            self.scores[part], self.images[part] = scores[keep], pool[keep]
            self.cells[part] = cells[keep]

    def best(self, part: int) -> list[tuple[float, np.ndarray, int, int]]:
        """(q_occ, image [H, W, 3] in [-1, 1], row, col) of the part's k best images."""
        if self.images[part] is None:
            return []
        return [
            (float(s), image, int(r), int(c))
            for s, image, (r, c) in zip(
                self.scores[part], self.images[part], self.cells[part], strict=True
            )
        ]


# --- figures a person reads ------------------------------------------------------

MIN_TILE = 96  # pixels: the side every image tile of a figure is upscaled to, at least
_PAD = 4
_TEXT = (0, 0, 0)
_BOX = (1.0, 0.85, 0.0)  # the gallery's box: yellow, visible on dark and light shapes


def upscale(images: np.ndarray, min_size: int = MIN_TILE) -> np.ndarray:
    """[..., H, W, C] -> [..., fH, fW, C], nearest, f = ceil(min_size / H) (at least 1)."""
    images = np.asarray(images, np.float32)
    factor = max(1, -(-min_size // images.shape[-3]))
    return np.repeat(np.repeat(images, factor, axis=-3), factor, axis=-2)


def _font(size: int = 13):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _text_size(text: str, font) -> tuple[int, int]:
    from PIL import Image, ImageDraw

    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox(
        (0, 0), text, font=font, spacing=2
    )
    return right - left, bottom - top


def labelled_grid(
    tiles: np.ndarray,
    col_labels=None,
    row_labels=None,
    tile_labels=None,
    right: np.ndarray | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tiles [R, C, h, w, 3] in [0, 1] on white, labelled; -> (image [H, W, 3], origins).

    col_labels [C] go above the columns, row_labels [R] left of the rows, tile_labels [R][C]
    under each tile (each may span lines); ``right`` [H', W', 3] is drawn right of the grid,
    top-aligned (a colour bar). origins[r * C + c] is tile (r, c)'s top-left pixel (y, x):
    the tiles are pasted unchanged.
    """
    from PIL import Image, ImageDraw

    tiles = np.asarray(tiles, np.float32)
    rows, cols, h, w, _ = tiles.shape
    font = _font()
    height = lambda labels: max((_text_size(t, font)[1] for t in labels if t), default=0)  # noqa: E731
    width = lambda labels: max((_text_size(t, font)[0] for t in labels if t), default=0)  # noqa: E731
    top = height(col_labels or []) + 2 * _PAD if col_labels else _PAD
    left = width(row_labels or []) + 2 * _PAD if row_labels else _PAD
    below = height([t for row in tile_labels or [] for t in row]) + _PAD if tile_labels else 0
    labels_w = width([*(col_labels or []), *(t for row in tile_labels or [] for t in row)])
    cell_h, cell_w = h + below + _PAD, max(w, labels_w) + _PAD
    extra = right.shape[1] + 2 * _PAD if right is not None else 0
    size_h = top + rows * cell_h
    if right is not None:
        size_h = max(size_h, top + right.shape[0] + _PAD)
    canvas = Image.new("RGB", (left + cols * cell_w + extra, size_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    origins = []
    for r in range(rows):
        for c in range(cols):
            y, x = top + r * cell_h, left + c * cell_w
            pixels = np.round(np.clip(tiles[r, c], 0, 1) * 255).astype(np.uint8)
            canvas.paste(Image.fromarray(pixels), (x, y))
            origins.append((y, x))
            if tile_labels and tile_labels[r][c]:
                draw.multiline_text((x, y + h + 2), tile_labels[r][c], _TEXT, font, spacing=2)
        if row_labels and row_labels[r]:
            text_h = _text_size(row_labels[r], font)[1]
            draw.multiline_text(
                (_PAD, top + r * cell_h + max(0, (h - text_h) // 2)),
                row_labels[r],
                _TEXT,
                font,
                spacing=2,
            )
    for c, text in enumerate(col_labels or []):
        if text:
            draw.multiline_text((left + c * cell_w, _PAD), text, _TEXT, font, spacing=2)
    if right is not None:
        pixels = np.round(np.clip(right, 0, 1) * 255).astype(np.uint8)
        canvas.paste(Image.fromarray(pixels), (left + cols * cell_w + _PAD, top))
    return np.asarray(canvas, np.float32) / 255.0, origins


def colour_map(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """[...] in [0, 1] -> [..., 3] RGB through a matplotlib colour map."""
    from matplotlib import colormaps

    return colormaps[name](np.clip(values, 0.0, 1.0))[..., :3].astype(np.float32)


def colour_bar(height: int, title: str = "q_occ", name: str = "viridis") -> np.ndarray:
    """A vertical colour scale from 1 (top) to 0, ticked at 0, 0.5 and 1 -> [H', W', 3]."""
    from PIL import Image, ImageDraw

    font = _font()
    bar_w, tick_w = 14, _text_size("0.5", font)[0] + 6
    title_h = _text_size(title, font)[1] + _PAD + 8  # room for the "1" tick beneath
    ramp = colour_map(np.linspace(1.0, 0.0, height)[:, None].repeat(bar_w, axis=1), name)
    width = max(bar_w + tick_w, _text_size(title, font)[0])
    canvas = Image.new("RGB", (width, height + title_h + 8), (255, 255, 255))
    canvas.paste(Image.fromarray(np.round(ramp * 255).astype(np.uint8)), (0, title_h))
    draw = ImageDraw.Draw(canvas)
    draw.text((0, 0), title, _TEXT, font)
    for value in (1.0, 0.5, 0.0):
        y = title_h + round((1.0 - value) * (height - 1))
        draw.line([(bar_w, y), (bar_w + 3, y)], fill=_TEXT)
        draw.text((bar_w + 5, y - 6), f"{value:g}", _TEXT, font)
    return np.asarray(canvas, np.float32) / 255.0


def heat_overlay(images: np.ndarray, q_occ: np.ndarray, name: str = "viridis") -> np.ndarray:
    """Occurrence maps over their images: images [B, H, W, 3] in [-1, 1], q_occ
    [B, h, w, N] -> [B, N, H, W, 3] in [0, 1], each cell coloured by its q_occ and blended
    with the image's grey so the shapes stay visible beneath.
    """
    images = np.asarray(images, np.float32)
    size = images.shape[1]
    q = np.asarray(upsample_nearest(tf.cast(q_occ, tf.float32), size))  # [B, H, W, N]
    grey = ((images + 1.0) / 2.0).mean(axis=-1, keepdims=True)[:, None]  # [B, 1, H, W, 1]
    heat = colour_map(np.transpose(q, [0, 3, 1, 2]), name)  # [B, N, H, W, 3]
    return np.clip(0.7 * heat + 0.3 * grey, 0.0, 1.0)


def occurrence_figure(images, q_occ, part_labels) -> np.ndarray:
    """One row per image: the image, then each part's occurrence map over it, labelled,
    with a colour scale -> [H, W, 3] in [0, 1].
    """
    images = np.asarray(images, np.float32)
    overlays = heat_overlay(images, q_occ)
    base = ((images + 1.0) / 2.0)[:, None]
    tiles = upscale(np.concatenate([base, overlays], axis=1))
    bar = colour_bar(tiles.shape[2])
    grid, _ = labelled_grid(tiles, col_labels=["image", *part_labels], right=bar)
    return grid


def _draw_box(image: np.ndarray, top: int, left: int, size: int, width: int) -> np.ndarray:
    """A copy of image [H, W, 3] with a size x size square outline at (top, left)."""
    out = image.copy()
    h, w = out.shape[:2]
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(h, top + size), min(w, left + size)
    out[y0 : y0 + width, x0:x1] = _BOX
    out[max(y0, y1 - width) : y1, x0:x1] = _BOX
    out[y0:y1, x0 : x0 + width] = _BOX
    out[y0:y1, max(x0, x1 - width) : x1] = _BOX
    return out


def gallery_figure(gallery: PartGallery, scale: int, part_labels) -> np.ndarray:
    """One row per part: its k strongest images, strongest first, each with a box on the
    cell (scale x scale pixels) where the part fires most, and that q_occ under it.
    """
    rows, labels = [], []
    shape = None
    for part in range(gallery.num_parts):
        best = gallery.best(part)
        tiles, row_labels = [], []
        for score, image, r, c in best:
            tile = upscale((image + 1.0) / 2.0)
            f = tile.shape[0] // image.shape[0]
            tiles.append(_draw_box(tile, r * scale * f, c * scale * f, scale * f, max(2, f)))
            row_labels.append(f"q {score:.2f}")
            shape = tile.shape
        rows.append(tiles)
        labels.append(row_labels)
    if shape is None:
        raise ValueError("the gallery is empty; add images first")
    blank = np.ones(shape, np.float32)
    tiles = np.stack(
        [np.stack(row + [blank] * (gallery.k - len(row))) for row in rows]
    )  # [N, k, H, W, 3]
    labels = [row + [""] * (gallery.k - len(row)) for row in labels]
    grid, _ = labelled_grid(tiles, row_labels=part_labels, tile_labels=labels)
    return grid


def pairs_figure(inputs, outputs, per_row: int = 4) -> np.ndarray:
    """Inputs beside their reconstructions, per_row pairs a row; both [B, H, W, 3] in
    [-1, 1] -> [H', W', 3] in [0, 1].
    """
    inputs = np.asarray(to_display(inputs))
    outputs = np.asarray(to_display(outputs))
    n, h, w, c = inputs.shape
    rows = -(-n // per_row)
    blank = np.ones([rows * per_row - n, h, w, c], np.float32)
    ins = np.concatenate([inputs, blank]).reshape(rows, per_row, h, w, c)
    outs = np.concatenate([outputs, blank]).reshape(rows, per_row, h, w, c)
    tiles = upscale(np.stack([ins, outs], axis=2).reshape(rows, 2 * per_row, h, w, c))
    grid, _ = labelled_grid(tiles, col_labels=["input", "recon."] * per_row)
    return grid


def tiles_figure(images, cols: int) -> np.ndarray:
    """[B, H, W, 3] in [-1, 1] -> an upscaled grid of cols columns, [H', W', 3] in [0, 1]."""
    images = np.asarray(to_display(images))
    n, h, w, c = images.shape
    rows = -(-n // cols)
    blank = np.ones([rows * cols - n, h, w, c], np.float32)
    tiles = upscale(np.concatenate([images, blank]).reshape(rows, cols, h, w, c))
    grid, _ = labelled_grid(tiles)
    return grid


# --- training curves -------------------------------------------------------------


def curves_image(series: dict[str, tuple[np.ndarray, np.ndarray]], cols: int = 3) -> np.ndarray:
    """One labelled panel per scalar, {name: (steps, values)} -> [H, W, 3] in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    from matplotlib import pyplot as plt

    names = list(series)
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = series[name]
        ax.plot(steps, values, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name in ("loss", "distortion") and values.size and values.min() > 0:
            # The first steps' loss is orders of magnitude above the rest.
            ax.set_yscale("log")
    fig.tight_layout()
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    plt.close(fig)
    return pixels
