"""The command line: flags generated from the config dataclasses, read once into them, and an
entry point whose user mistakes end in one line and exit status 2.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from patchvae_tf import config
from patchvae_tf.config import checks
from patchvae_tf.errors import UserError

# Set by the command scripts for the package's import only; their children import it whole.
os.environ.pop("PATCHVAE_TF_COMMAND", None)

# A field's annotation (a string under `from __future__ import annotations`) -> absl kind.
_KINDS = {
    "str": "string",
    "str | None": "string",
    "int": "integer",
    "float": "float",
    "bool": "boolean",
    "bool | None": "boolean",
    "tuple[str, ...]": "list",
    "tuple[int, ...]": "list",
}


def define(*sections) -> None:
    """Defines a flag for every field of the dataclasses, with its default and help text.

    Names already defined are skipped: commands share some (workdir, dataset, seed, ...), and
    the first definition stands. Safe to call twice.
    """
    for section in sections:
        for f in dataclasses.fields(section):
            if f.name in flags.FLAGS:
                continue
            kind = _KINDS[f.type]
            default = list(f.default) if kind == "list" else f.default
            getattr(flags, f"DEFINE_{kind}")(f.name, default, f.metadata["help"])


def read(section, values: flags.FlagValues | None = None):
    """An instance of the dataclass section from parsed flags, which checks them (UserError);
    lists become tuples.
    """
    values = values or flags.FLAGS
    kwargs = {}
    for f in dataclasses.fields(section):
        value = getattr(values, f.name)
        if _KINDS[f.type] == "list":
            items = [str(v).strip() for v in value or () if str(v).strip()]
            if f.type == "tuple[int, ...]":
                try:
                    items = [int(v) for v in items]
                except ValueError:
                    raise UserError(
                        f"--{f.name} must be comma-separated integers, got {','.join(items)!r}"
                    ) from None
            value = tuple(items)
        elif f.type == "str" and value is None:
            # A string flag left unset reads back as None where another command defined it
            # first (with a None default).
            value = ""
        kwargs[f.name] = value
    return section(**kwargs)


def define_train() -> None:
    define(*config.TRAIN_SECTIONS)


def train_config(values: flags.FlagValues | None = None) -> config.Config:
    """The validated Config of train.py's parsed flags."""
    data, model, train, distribute = (read(s, values) for s in config.TRAIN_SECTIONS)
    return checks.validate(config.Config(data, model, train, distribute))


def define_eval() -> None:
    define(config.EvalConfig)


def eval_config(values: flags.FlagValues | None = None) -> config.EvalConfig:
    return checks.validate_eval(read(config.EvalConfig, values))


def define_recognizer() -> None:
    define(config.RecognizerConfig)


def recognizer_config(values: flags.FlagValues | None = None) -> config.RecognizerConfig:
    return read(config.RecognizerConfig, values)


def define_export() -> None:
    define(config.ExportConfig)


def export_config(values: flags.FlagValues | None = None) -> config.ExportConfig:
    return checks.validate_export(read(config.ExportConfig, values))


def define_bench() -> None:
    define(config.BenchConfig)


def bench_config(values: flags.FlagValues | None = None) -> config.BenchConfig:
    return checks.validate_bench(read(config.BenchConfig, values))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))
    return []


def run(main: Callable[[], None]) -> None:
    """Like ``absl.app.run``, but a bad flag, a positional argument or a UserError prints one
    line and exits 2. ``main`` reads its config from the parsed flags.
    """

    def guarded(argv: list[str]) -> None:
        logging.set_verbosity(logging.WARNING)
        try:
            if len(argv) > 1:
                raise UserError(f"unexpected arguments {argv[1:]!r}; flags start with --")
            main()
        except UserError as e:
            _fail(str(e))

    app.run(guarded, flags_parser=_parse)
