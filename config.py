"""Command-line parsing for the entry points' config dataclasses (cleanRL style: one dataclass, help
on every field). `--some-field VALUE` sets `some_field`; booleans take true/false, or nothing for
true. Shared by train.py, sft.py, eval.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys


class UserError(ValueError):
    """A mistake in the user's flags, data or model folder (not a bug): the entry points print one
    line `error: <message>` and exit with code 2 (`run_main`). A ValueError, so callers catching
    those still do."""


def run_main(main) -> None:
    """Call an entry point's `main()`; a UserError ends the process with one line on stderr and exit
    code 2 (argparse's code for bad flags); anything else is a bug and keeps its traceback."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message):             # one line like every user error (argparse adds usage)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def opt(default, help: str, choices: tuple = (), repeat: bool = False):
    """A config field: its default, one line of help (`--help` shows both), and optionally the
    values it may take (checked by `check`) or `repeat` (the flag may be given several times; its
    values are joined with commas)."""
    meta = ({"help": help} | ({"choices": tuple(choices)} if choices else {})
            | ({"repeat": True} if repeat else {}))
    return dataclasses.field(default=default, metadata=meta)


def _choices(f) -> str:
    return (f" {{{' | '.join(map(str, f.metadata['choices']))}}}" if f.metadata.get("choices")
            else "")


def check(cfg, rules: dict[str, tuple[bool, str]] | None = None) -> None:
    """Raise UserError naming the first flag whose value is not one of its metadata["choices"], or
    whose entry in `rules` (field name -> (the value is valid, what is valid: ">= 1")) is not
    valid: "--steps must be >= 1, got 0". The one range and choice check of every entry point."""
    for f in dataclasses.fields(cfg):
        value, choices = getattr(cfg, f.name), f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"--{f.name.replace('_', '-')} must be one of "
                            f"{', '.join(map(str, choices))}, got {value!r}")
    for name, (ok, valid) in (rules or {}).items():
        if not ok:
            raise UserError(f"--{name.replace('_', '-')} must be {valid}, "
                            f"got {getattr(cfg, name)!r}")


def _by_owner(cls) -> list[tuple[type, dataclasses.Field]]:
    """(declaring class, field) for every field of `cls`: cls's own fields first, then those of each
    base in turn (train.py's Config, then common.Training, then common.Runtime): --help's order."""
    names = [(owner, vars(owner).get("__annotations__", {})) for owner in cls.__mro__[:-1]]
    return sorted(((next(o for o, ann in names if f.name in ann), f)
                   for f in dataclasses.fields(cls)), key=lambda of: cls.__mro__.index(of[0]))


def parse(cls, argv=None, description: str | None = None):
    """Parse argv into an instance of dataclass `cls`; returns (config, set of field names given
    explicitly).

    Every field becomes `--field-name` with its metadata["help"], its choices and default shown by
    `--help`. A str field with metadata["repeat"] may be given several times; its values are joined
    with commas (e.g. train.py's `--eval-data a=x.json --eval-data b=y.json` is
    "a=x.json,b=y.json"). Flags must be spelled out: an abbreviation (`--prompts-per 2`) is refused,
    since a preset overwrites every field whose full flag is not on the command line.
    Raises SystemExit (argparse) for unknown or abbreviated flags or bad values; TypeError if a
    field has no help.
    """
    p = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                allow_abbrev=False)
    groups = {}
    for owner, f in _by_owner(cls):
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text")
        kind = {bool: _bool, int: int, float: float, str: str}[type(f.default)]
        extra = {"nargs": "?", "const": True} if kind is _bool else {}   # a bare --flag means true
        if f.metadata.get("repeat"):
            extra = {"action": "append"}                 # default None: filled in below
        group = groups.setdefault(owner, p if owner is cls else p.add_argument_group(
            f"{owner.__module__}.{owner.__name__}: {owner.__doc__.splitlines()[0]}"))
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind,
                           default=None if f.metadata.get("repeat") else f.default,
                           metavar=type(f.default).__name__.upper(),
                           help=f"{f.metadata['help']}{_choices(f)} (default: {f.default!r})",
                           **extra)
    ns = p.parse_args(argv)
    for f in dataclasses.fields(cls):
        if f.metadata.get("repeat"):
            value = getattr(ns, f.name)
            setattr(ns, f.name, f.default if value is None else ",".join(value))
    explicit = set()
    tokens = [a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])]
    for f in dataclasses.fields(cls):
        if "--" + f.name.replace("_", "-") in tokens:
            explicit.add(f.name)
    return cls(**vars(ns)), explicit
