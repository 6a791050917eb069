"""Markdown tables of results, for the benchmarks and the parity harness alike."""

from __future__ import annotations


def row(cells) -> str:
    """One table row; None is an empty cell."""
    return "| " + " | ".join("" if c is None else str(c) for c in cells) + " |"


def table(header: list, rows: list) -> list[str]:
    """A table's lines: the header, its rule, then one line per row of cells."""
    return [row(header), row(["---"] * len(header)), *(row(r) for r in rows)]


def sci(value, digits: int = 2) -> str:
    """A figure in scientific notation, or an empty cell for None."""
    return "" if value is None else f"{value:.{digits}e}"
