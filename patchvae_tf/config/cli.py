"""The command line: a command's flags made from its config sections, parsed into them, and an
entry point whose user mistakes end in one line and exit status 2.

Each command parses into flags of its own (a fresh ``absl.flags.FlagValues``), so commands
that share a field name (workdir, dataset, seed) never see each other's defaults.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags, logging

from patchvae_tf.config import fields
from patchvae_tf.errors import UserError


def sections_of(spec) -> tuple[type, ...]:
    """The sections a command's config is read into: a composite config's SECTIONS (train.py's
    Config), or the one section itself.
    """
    return getattr(spec, "SECTIONS", (spec,))


def define(spec, values: flags.FlagValues) -> None:
    """Defines in values a flag for every field of spec's sections, with its default and help."""
    for section in sections_of(spec):
        for f in dataclasses.fields(section):
            kind = fields.flag_kind(f)
            default = list(f.default) if kind == "list" else f.default
            getattr(flags, f"DEFINE_{kind}")(
                f.name, default, f.metadata["help"], flag_values=values
            )


def read(spec, values: flags.FlagValues) -> Any:
    """The config of parsed flags for spec, which checks every value (UserError); lists become
    tuples.
    """
    built = []
    for section in sections_of(spec):
        kwargs = {}
        for f in dataclasses.fields(section):
            value = values[f.name].value
            if fields.flag_kind(f) == "list":
                items = [str(v).strip() for v in value or () if str(v).strip()]
                if f.type == "tuple[int, ...]":
                    try:
                        items = [int(v) for v in items]
                    except ValueError:
                        raise UserError(
                            f"--{f.name} must be comma-separated integers, got {','.join(items)!r}"
                        ) from None
                value = tuple(items)
            kwargs[f.name] = value
        built.append(section(**kwargs))
    return spec(*built) if hasattr(spec, "SECTIONS") else built[0]


def parse(spec, argv: Sequence[str]) -> Any:
    """The config of a command line (argv[0] is the program; --flagfile works).

    Raises UserError for an unknown or malformed flag, a positional argument or a bad value;
    prints the flags' help and exits 0 for --help.
    """
    check_flagfiles(argv)
    values = flags.FlagValues()
    define(spec, values)
    flags.DEFINE_boolean("help", False, "Show the flags and exit", flag_values=values)
    try:
        rest = values(list(argv))
    except flags.Error as e:
        raise UserError(str(e)) from None
    if values["help"].value:
        print(usage(spec, argv[0]))
        sys.exit(0)
    if len(rest) > 1:
        raise UserError(f"unexpected arguments {rest[1:]!r}; flags start with --")
    return read(spec, values)


_FLAGFILE = "--flagfile="


def check_flagfiles(argv: Sequence[str]) -> None:
    """Raises UserError for a flagfile that includes itself, directly or through others:
    absl only warns and goes on, and the run trained with every default.
    """

    def walk(path: str, chain: tuple[str, ...]) -> None:
        real = os.path.realpath(path)
        if real in chain:
            cycle = " -> ".join([*chain[chain.index(real) :], real])
            raise UserError(f"--flagfile={path} includes itself ({cycle})")
        try:
            with open(path) as f:
                lines = [line.strip() for line in f]
        except OSError:
            return  # absl says that it cannot open it
        for line in lines:
            if line.startswith(_FLAGFILE):
                walk(line[len(_FLAGFILE) :], (*chain, real))

    for arg in argv[1:]:
        if arg.startswith(_FLAGFILE):
            walk(arg[len(_FLAGFILE) :], ())


# Faults of the disk a command writes to: one line naming the file, not a traceback.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
_DISK_WORDS = ("No space left on device", "Disk quota exceeded", "Read-only file system")


def disk_fault(e: BaseException) -> str:
    """One line for a write that failed for want of space or permission, or ""."""
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
        where = f" {e.filename!r}" if e.filename else ""
        return f"cannot write{where}: {e.strerror}; nothing saved before was changed"
    text = str(e)
    for words in _DISK_WORDS:
        if words in text:
            first = next((line for line in text.splitlines() if words in line), words)
            first = " ".join(first.split())[:300]
            return f"cannot write: {first}; nothing saved before was changed"
    return ""


def usage(spec, program: str) -> str:
    """--help's text: each section's description, then its flags with their defaults."""
    lines = [f"usage: {program} [--flagfile=FILE] [--flag=value ...]"]
    for section in sections_of(spec):
        lines += ["", (section.__doc__ or section.__name__).strip().splitlines()[0]]
        for f in dataclasses.fields(section):
            default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            lines.append(f"  --{f.name}: {f.metadata['help']} (default: {default!r})")
    return "\n".join(lines)


def run(main: Callable[[Any], None], spec, argv: Sequence[str] | None = None) -> None:
    """Parses sys.argv into spec's config and calls main(config); a bad flag, a UserError or
    a write refused by a full or read-only disk prints one line and exits 2.
    """
    # Our flags live apart from absl's global ones; marking those parsed keeps absl logging
    # from warning that it logs before flag parsing.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    logging.set_verbosity(logging.WARNING)
    try:
        config = parse(spec, sys.argv if argv is None else argv)
        if argv is None:  # a command, not a test calling it
            from patchvae_tf import startup_notices

            startup_notices.filter_stderr()
        main(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a full disk or a read-only one: TF's errors and OSError
        message = disk_fault(e)
        if not message:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
