"""Config fields that carry their flag's help text and the checks their values must pass."""

from __future__ import annotations

import dataclasses
from typing import Any

from patchvae_tf.errors import UserError


def option(
    default: Any,
    help: str,  # noqa: A002  (the flag's --help text)
    *,
    choices: tuple | None = None,
    positive: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
) -> Any:
    """A config field: its default, its --help text and the checks ``check_options`` makes.

    The command-line flags are generated from these (patchvae_tf.cli).
    """
    checks = {
        "choices": choices,
        "positive": positive,
        "minimum": minimum,
        "maximum": maximum,
        "below": below,  # an exclusive upper bound
    }
    return dataclasses.field(default=default, metadata={"help": help, **checks})


def check_options(section) -> None:
    """Raises UserError naming the first field of section that fails its option's checks."""
    for f in dataclasses.fields(section):
        value, meta = getattr(section, f.name), f.metadata
        values = value if isinstance(value, tuple) else (value,)
        if meta.get("choices") is not None:
            for v in values:
                if v not in meta["choices"]:
                    expected = ", ".join(c for c in meta["choices"] if c)
                    raise UserError(f"unknown --{f.name} {v!r}; expected one of {expected}")
        if value is None or isinstance(value, (str, tuple, bool)):
            continue
        if meta.get("positive") and not value > 0:
            raise UserError(f"--{f.name} must be positive, got {value}")
        low, high, below = meta.get("minimum"), meta.get("maximum"), meta.get("below")
        if low is not None and high is not None and not low <= value <= high:
            raise UserError(f"--{f.name} must be in [{low}, {high}], got {value}")
        if low is not None and below is not None and not low <= value < below:
            raise UserError(f"--{f.name} must be in [{low}, {below}), got {value}")
        if low is not None and value < low:
            raise UserError(f"--{f.name} must be >= {low}, got {value}")
        if high is not None and value > high:
            raise UserError(f"--{f.name} must be <= {high}, got {value}")
