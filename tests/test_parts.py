"""The part-discovery metrics on hand-made occurrence maps, whose scores are known exactly."""

import itertools
import math

import numpy as np
import pytest

from patchvae_tf import evaluation

REGIONS = ("circle", "triangle", "square", "background")
CLASSES = REGIONS[:3]
PRIOR = 1 / 8


def _cells(per_region: int = 6) -> np.ndarray:
    """[2, 2 * per_region, 1, 4] one-hot cells: each image holds per_region cells of each
    region, in region order."""
    labels = np.repeat(np.arange(4), per_region)
    one_hot = np.eye(4, dtype=bool)[labels]  # [4 * per_region, 4]
    return one_hot.reshape(2, 2 * per_region, 1, 4)


def _maps(cells: np.ndarray, columns) -> np.ndarray:
    """q [n, h, w, N] from N per-cell score columns, each a function of the region index."""
    region = cells.argmax(axis=-1)
    return np.stack([f(region) for f in columns], axis=-1).astype(np.float32)


def _at_prior(region):
    return np.full(region.shape, PRIOR)


def test_one_part_per_class_is_a_perfect_distinct_match():
    cells = _cells()
    # Parts 0-2 stay at the prior; part 3 finds the square, 4 the circle, 5 the background,
    # 6 the triangle, 7 stays at the prior.
    finds = {3: 2, 4: 0, 5: 3, 6: 1}
    columns = [
        (lambda r, j=finds[i]: np.where(r == j, 0.9, 0.01)) if i in finds else _at_prior
        for i in range(8)
    ]
    result = evaluation.part_scores(_maps(cells, columns), cells, REGIONS, CLASSES, PRIOR)
    assert result["matched"] == {
        "circle": {"part": 4, "auroc": 1.0},
        "triangle": {"part": 6, "auroc": 1.0},
        "square": {"part": 3, "auroc": 1.0},
        "background": {"part": 5, "auroc": 1.0},
    }
    assert result["distinct_coverage"] == 1.0
    assert result["classes_detected"] == 3
    assert result["active_parts"] == 4
    assert [p["matched_region"] for p in result["parts"]] == [
        None,
        None,
        None,
        "square",
        "circle",
        "background",
        "triangle",
        None,
    ]
    # The parts at the prior pay no occurrence rate; the detectors pay the same rate each.
    rates = [p["occurrence_rate"] for p in result["parts"]]
    assert rates[0] == rates[7] == pytest.approx(0.0, abs=1e-6)
    kl = lambda q: q * math.log(q / PRIOR) + (1 - q) * math.log((1 - q) / (1 - PRIOR))  # noqa: E731
    assert rates[4] == pytest.approx((kl(0.9) + 3 * kl(0.01)) / 4, rel=1e-5)


def test_a_foreground_part_counts_for_one_class_only():
    """The failure the old "best part per region" hid: one part on every shape."""
    cells = _cells()
    columns = [lambda r: np.where(r < 3, 0.9, 0.01)] + [_at_prior] * 7
    result = evaluation.part_scores(_maps(cells, columns), cells, REGIONS, CLASSES, PRIOR)
    # Against one class, the foreground part ties with the two other classes' cells (half
    # a win each) and beats the background's: (6 + 0.5 * 12) / 18 = 2/3.
    foreground = 2 / 3
    assert result["per_region_best"] == pytest.approx(
        {"circle": foreground, "triangle": foreground, "square": foreground, "background": 0.5}
    )
    assert result["region_coverage"] == pytest.approx((3 * foreground + 0.5) / 4)
    # One to one, it serves one class; the parts at the prior are not active, so the other
    # classes and the background get no part, and count as chance.
    ((name, match),) = result["matched"].items()
    assert name in CLASSES and match == {"part": 0, "auroc": pytest.approx(foreground)}
    assert result["distinct_coverage"] == pytest.approx((foreground + 1.0) / 3)
    assert result["classes_detected"] == 0
    assert result["active_parts"] == 1


def test_random_maps_find_nothing():
    rng = np.random.default_rng(0)
    cells = np.eye(4, dtype=bool)[rng.integers(0, 4, [40, 8, 8])]  # 2,560 cells
    # Near the prior: no part is active, so none is matched and every class is at chance.
    q = PRIOR + rng.uniform(-0.02, 0.02, [40, 8, 8, 8])
    result = evaluation.part_scores(q, cells, REGIONS, CLASSES, PRIOR)
    assert result["active_parts"] == 0 and result["matched"] == {}
    assert result["distinct_coverage"] == 0.5 and result["classes_detected"] == 0
    # Uniform noise of half-width 0.02 costs 0.02^2 / 3 / (2 p (1 - p)) = 6e-4 nats per cell.
    expected = 0.02**2 / 3 / (2 * PRIOR * (1 - PRIOR))
    for p in result["parts"]:
        assert p["occurrence_rate"] == pytest.approx(expected, rel=0.15)
    # Anywhere in [0, 1]: every part is active, and the best of 8 * 7 * 6 * 5 assignments of
    # chance detectors is a little above 0.5.
    q = rng.uniform(0.0, 1.0, [40, 8, 8, 8])
    result = evaluation.part_scores(q, cells, REGIONS, CLASSES, PRIOR)
    assert result["active_parts"] == 8 and len(result["matched"]) == 4
    assert 0.5 < result["distinct_coverage"] < 0.56
    assert result["classes_detected"] == 0


def test_the_assignment_is_optimal_where_greedy_is_not():
    # Greedy takes part 0 for region 0 (0.9) and leaves 0.5: 1.4. The optimum is 1.65.
    table = np.array([[0.9, 0.8], [0.85, 0.5]])
    assert evaluation.match_parts(table) == {0: (1, 0.85), 1: (0, 0.8)}
    rng = np.random.default_rng(1)
    table = rng.uniform(size=[6, 4])
    matched = evaluation.match_parts(table)
    best = max(
        sum(table[p, r] for r, p in enumerate(parts))
        for parts in itertools.permutations(range(6), 4)
    )
    assert sum(a for _, a in matched.values()) == pytest.approx(best)
    assert len({p for p, _ in matched.values()}) == 4


def test_absent_regions_and_too_few_parts_get_no_match():
    table = np.array([[0.7, np.nan, 0.6], [0.9, np.nan, 0.2]])
    assert evaluation.match_parts(table) == {0: (1, 0.9), 2: (0, 0.6)}
    one_part = np.array([[0.7, 0.8, 0.6]])
    assert evaluation.match_parts(one_part) == {1: (0, 0.8)}


def test_occurrence_rate_is_the_bernoulli_kl():
    q = np.array([[0.5, PRIOR, 0.01]])
    expected = [
        0.5 * math.log(0.5 / PRIOR) + 0.5 * math.log(0.5 / (1 - PRIOR)),
        0.0,
        0.01 * math.log(0.01 / PRIOR) + 0.99 * math.log(0.99 / (1 - PRIOR)),
    ]
    np.testing.assert_allclose(evaluation.occurrence_rates(q, PRIOR), expected, atol=1e-9)


def test_cell_count_accuracy_reads_the_label_from_the_largest_class():
    # Image 0: 3 circle cells, 1 triangle cell; image 1: 1 circle cell, 2 square cells;
    # image 2: background only besides 1 triangle cell. Background cells never win.
    regions = [[0, 0, 0, 1, 3, 3], [0, 2, 2, 3, 3, 3], [1, 3, 3, 3, 3, 3]]
    cells = np.eye(4, dtype=bool)[np.array(regions)].reshape(3, 2, 3, 4)
    assert evaluation.cell_count_accuracy(cells, np.array([0, 2, 1])) == 1.0
    # A label the counts disagree with (the circle's share of image 1 was larger in pixels).
    assert evaluation.cell_count_accuracy(cells, np.array([0, 0, 1])) == pytest.approx(2 / 3)


def test_parts_are_matched_on_one_split_and_scored_on_another():
    """match=(q, cells) of another split chooses the parts; the AUROCs are this split's, so
    chance detectors no longer score above chance by being selected on the cells they are
    scored on.
    """
    rng = np.random.default_rng(1)
    cells = np.eye(4, dtype=bool)[rng.integers(0, 4, [40, 8, 8])]
    other = np.eye(4, dtype=bool)[rng.integers(0, 4, [40, 8, 8])]
    q, q_other = rng.uniform(0.0, 1.0, [2, 40, 8, 8, 8])
    selected = evaluation.part_scores(q, cells, REGIONS, CLASSES, PRIOR)
    held_out = evaluation.part_scores(q, cells, REGIONS, CLASSES, PRIOR, match=(q_other, other))
    assert selected["distinct_coverage"] > 0.5
    assert abs(held_out["distinct_coverage"] - 0.5) < 0.015
    assert held_out["distinct_coverage"] < selected["distinct_coverage"]
    # Part 3 finds the square on the matching split, part 4 on the scored one: the square
    # keeps part 3, scored by what part 3 does here (nothing: at chance).
    columns = [_at_prior] * 8
    columns[3] = lambda r: np.where(r == 2, 0.9, 0.01)
    columns[4] = lambda r: rng.uniform(0.0, 1.0, r.shape)
    match = (_maps(_cells(), columns), _cells())
    columns[3], columns[4] = columns[4], columns[3]
    result = evaluation.part_scores(
        _maps(_cells(), columns), _cells(), REGIONS, CLASSES, PRIOR, match
    )
    assert result["matched"]["square"]["part"] == 3
    assert result["matched"]["square"]["auroc"] < 0.7


def test_auroc_counts_pairs_and_ties():
    from patchvae_tf import evaluation

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert evaluation.auroc(scores, labels) == pytest.approx(pairs)
    assert evaluation.auroc([0.1, 0.2, 0.9], [False, False, True]) == 1.0
    assert np.isnan(evaluation.auroc([0.1, 0.2], [True, True]))
