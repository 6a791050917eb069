"""Config fields that carry their flag's help text and the checks their values must pass, and
the base of the config sections, which makes those checks when a section is built.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from patchvae_tf.errors import UserError


def option(
    default: Any,
    help: str,  # noqa: A002  (the flag's --help text)
    *,
    choices: tuple | None = None,
    required: bool = False,
    positive: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
) -> Any:
    """A config field: its default, its --help text and the checks ``check_options`` makes.

    The command-line flags are generated from these (patchvae_tf.config.cli).
    """
    checks = {
        "choices": choices,
        "required": required,  # a string that may not be blank
        "positive": positive,
        "minimum": minimum,
        "maximum": maximum,
        "below": below,  # an exclusive upper bound
    }
    return dataclasses.field(default=default, metadata={"help": help, **checks})


# A field's annotation (a string under `from __future__ import annotations`) -> the Python
# types its value may have, how a message names them, and the kind of its absl flag.
_TYPES = {
    "str": ((str,), "a string", "string"),
    "str | None": ((str, type(None)), "a string or None", "string"),
    "int": ((numbers.Integral,), "an integer", "integer"),
    "float": ((numbers.Real,), "a number", "float"),
    "bool": ((bool,), "True or False", "boolean"),
    "bool | None": ((bool, type(None)), "True, False or None", "boolean"),
    "tuple[str, ...]": ((str,), "a list of strings", "list"),
    "tuple[int, ...]": ((numbers.Integral,), "a list of integers", "list"),
}


def flag_kind(field: dataclasses.Field) -> str:
    """The absl flag kind of a config field: string, integer, float, boolean or list."""
    return _TYPES[field.type][2]


def check_types(section) -> None:
    """Raises UserError naming the first field whose value has the wrong type.

    Lists become tuples and integers of float fields floats (as read from JSON), in place.
    """
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        types, kind, _ = _TYPES[f.type]
        many = f.type.startswith("tuple")
        if many and isinstance(value, list):
            value = tuple(value)
        items = value if many and isinstance(value, tuple) else None if many else (value,)
        bad = items is None or any(
            not isinstance(v, types) or (isinstance(v, bool) and bool not in types) for v in items
        )
        if bad:
            raise UserError(f"--{f.name} must be {kind}, got {value!r}")
        if f.type in ("int", "float"):  # NumPy scalars too, as plain Python numbers
            value = int(value) if f.type == "int" else float(value)
            # No field means anything by inf or NaN (--learning_rate=inf trained into NaN).
            if not math.isfinite(value):
                raise UserError(f"--{f.name} must be a finite number, got {value}")
        elif f.type == "tuple[int, ...]":
            value = tuple(int(v) for v in value)
        # Frozen dataclasses: the normalised value replaces the given one before anyone reads it.
        object.__setattr__(section, f.name, value)


class Checked:
    """Base of the config dataclasses: building one (directly, by dataclasses.replace, or
    from a dict) checks each field's type and options, then the section's own ``check``, and
    raises UserError with the command line's one-line message naming the first bad value.
    """

    def __post_init__(self) -> None:
        check_types(self)
        check_options(self)
        self.check()

    def check(self) -> None:
        """Checks across this section's fields; raises UserError. None by default."""

    def to_dict(self) -> dict[str, Any]:
        """The section as plain values (nested sections as dicts), as config.json holds it."""
        return dataclasses.asdict(self)


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
        if meta.get("required") and not (value or "").strip():
            raise UserError(f"--{f.name} is required, got {value!r}")
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
