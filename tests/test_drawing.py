"""How the evaluation report draws: part labels, galleries, grids and boxes."""

import numpy as np
import pytest


def test_part_labels_name_the_match():
    from patchvae_tf import evaluation

    parts = [
        {
            "part": 0,
            "matched_region": "circle",
            "matched_auroc": 0.934,
            "mean_q_occ": 0.2,
            "active": True,
        },
        {
            "part": 1,
            "matched_region": None,
            "matched_auroc": None,
            "mean_q_occ": 0.125,
            "active": False,
        },
    ]
    assert evaluation.part_labels({"parts": parts}, 2) == [
        "part 0\ncircle 0.93\nmean q 0.200",
        "part 1\nunmatched\nmean q 0.125 off",
    ]
    assert evaluation.part_labels(None, 2) == ["part 0", "part 1"]


def test_part_gallery_keeps_the_strongest_image_and_boxes_its_cell():
    from patchvae_tf.evaluation import drawing

    images = np.full([3, 8, 8, 3], -1.0, np.float32)
    q = np.zeros([3, 4, 4, 2], np.float32)
    for i, (r, c, score) in enumerate([(1, 2, 0.5), (3, 0, 0.9), (0, 0, 0.7)]):
        images[i, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = 1.0  # the cell the part found
        q[i, r, c, 0] = score
    gallery = drawing.PartGallery(num_parts=2, k=2)
    gallery.add(images[:2], q[:2])
    gallery.add(images[2:], q[2:])
    best = gallery.best(0)
    assert [s for s, *_ in best] == pytest.approx([0.9, 0.7])
    assert [(r, c) for _, _, r, c in best] == [(3, 0), (0, 0)]
    np.testing.assert_array_equal(best[0][1], images[1])
    figure = drawing.gallery_figure(gallery, scale=2, part_labels=["part 0", "part 1"])
    # 8-pixel images upscaled 12 times; two rows of two tiles and their labels.
    assert figure.shape[0] >= 2 * 96 and figure.shape[1] >= 2 * 96


def test_labelled_grid_pastes_tiles_unchanged_and_upscale_is_nearest():
    from patchvae_tf.evaluation import drawing

    rng = np.random.default_rng(0)
    small = rng.uniform(size=[2, 3, 4, 4, 3]).astype(np.float32)
    tiles = drawing.upscale(small)  # 4 pixels -> 96: each pixel a 24 x 24 block
    assert tiles.shape == (2, 3, 96, 96, 3)
    np.testing.assert_array_equal(
        tiles[1, 2, 24:48, 72:96], np.broadcast_to(small[1, 2, 1, 3], [24, 24, 3])
    )
    grid, origins = drawing.labelled_grid(
        tiles, col_labels=["a", "b", "c"], row_labels=["row 0", "row 1"]
    )
    assert len(origins) == 6
    for i, (y, x) in enumerate(origins):
        # PNG-exact: tiles are stored as 8-bit.
        expected = np.round(tiles[i // 3, i % 3] * 255) / 255
        np.testing.assert_allclose(grid[y : y + 96, x : x + 96], expected, atol=1e-6)
    assert drawing.upscale(np.zeros([100, 100, 3])).shape == (100, 100, 3)


def test_box_outlines_the_cell():
    from patchvae_tf.evaluation import drawing

    image = np.zeros([12, 12, 3], np.float32)
    boxed = drawing._draw_box(image, top=3, left=6, size=6, width=2)
    edge = np.all(np.isclose(boxed, drawing._BOX), axis=-1)
    assert edge.sum() == 6 * 6 - 2 * 2  # a 6 x 6 square less its 2 x 2 inside
    assert edge[3, 6] and edge[8, 11] and not edge[5, 8] and not edge[2, 6]
