"""Checks over the test suite itself: asserts that cannot fail."""

import ast
import pathlib

import pytest

TESTS = pathlib.Path(__file__).parent


def _vacuous_asserts(source: str) -> list[int]:
    """Lines of asserts that hold whatever the code does: ``assert a if c else b`` (Python
    parses it as an assert of the whole conditional, so the else branch is asserted as a
    value) and ``assert (x, "message")`` (a non-empty tuple is always true).
    """
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assert) and (
            isinstance(node.test, ast.IfExp)
            or (isinstance(node.test, ast.Tuple) and node.test.elts)
        ):
            lines.append(node.lineno)
    return lines


def test_the_check_finds_vacuous_asserts():
    source = "assert x == [1] if c else [2]\nassert (x, 'why')\nassert x == ([1] if c else [2])\n"
    assert _vacuous_asserts(source) == [1, 2]


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_assert_can_hold_by_construction(path):
    assert _vacuous_asserts(path.read_text()) == [], path.name
