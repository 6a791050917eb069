"""Ours against the reference, window by window: the ratio that a shared host cannot fake.

Each of our timing windows runs next to one of the reference's (alternating which goes
first), so a burst of load from other processes lands on both sides of a pair. The ratio
of a pair is ours over theirs for rates, theirs over ours for times (so above 1 is always
"ours faster"); the reported ratio is the median over pairs.
"""

from __future__ import annotations

import statistics


def interleave(ours, theirs, windows: int) -> tuple[list[float], list[float]]:
    """Calls ours() and theirs() `windows` times each, alternately, the first of each pair
    switching every window; returns their results in call order of the pairs.
    """
    a, b = [], []
    for w in range(windows):
        if w % 2 == 0:
            a.append(ours())
            b.append(theirs())
        else:
            b.append(theirs())
            a.append(ours())
    return a, b


def compare(ours: list[float], theirs: list[float] | None, higher_is_better: bool) -> dict:
    """Our median, theirs, and the median and range of the per-pair ratios (None without a
    reference).
    """
    out = {"ours": round(statistics.median(ours), 4), "ours_windows": [round(x, 4) for x in ours]}
    if not theirs:
        return out | {"theirs": None, "ratio": None}
    if len(theirs) != len(ours):
        raise ValueError(f"{len(ours)} windows of ours against {len(theirs)} of theirs")
    pairs = [o / t if higher_is_better else t / o for o, t in zip(ours, theirs, strict=True)]
    return out | {
        "theirs": round(statistics.median(theirs), 4),
        "theirs_windows": [round(x, 4) for x in theirs],
        "ratio": round(statistics.median(pairs), 3),
        "ratio_range": [round(min(pairs), 3), round(max(pairs), 3)],
    }
