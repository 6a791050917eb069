"""Runs an absl entry point so that user mistakes end in one line and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags, logging

from patchvae_tf.errors import UserError  # noqa: F401  (re-exported for entry points)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))
    return []


def run(main: Callable[[list[str]], None]) -> None:
    """Like ``absl.app.run``, but a bad flag or a UserError prints one line and exits 2."""

    def guarded(argv: list[str]) -> None:
        logging.set_verbosity(logging.WARNING)
        try:
            main(argv)
        except UserError as e:
            _fail(str(e))

    app.run(guarded, flags_parser=_parse)
