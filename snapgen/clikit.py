"""A tiny subcommand dispatcher shared by the ``snapgen`` and ``archsearch`` CLIs.

Each subcommand lives in its own module (``<package>.commands.<name>``) exposing
``add_arguments(parser)`` and ``run(args) -> int | None``; modules are imported lazily so that
``--help`` and light commands do not import heavy dependencies.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from contextlib import contextmanager

from snapgen.config import COMMAND_LINE
from snapgen.errors import UserError, user_errors


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own convention)
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def run_cli(prog: str, package: str, commands: dict[str, str], argv=None) -> int:
    from snapgen import __version__

    parser = _Parser(prog=prog)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only import the module of the requested command (and all of them for --help).
    wanted = [a for a in argv if not a.startswith("-")][:1]
    if not wanted and "--version" in argv:
        parser.parse_args(["--version"])  # prints and exits before any command module is imported
    for name, help_text in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if not wanted or wanted[0] == name:
            mod = importlib.import_module(f"{package}.commands.{name.replace('-', '_')}")
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # overrides after a flag (CONFIG -m key=a,b): argparse leaves them over
        args.overrides = list(args.overrides) + extra
    with user_errors():
        rc = args._run(args)
    return int(rc or 0)


def add_overrides(p, example: str) -> None:
    """The Hydra override arguments of a command that loads a config file, and ``-m/--multirun``."""
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help=f"Hydra overrides: key=value, +key=value (add), ~key (delete); e.g. {example}")
    p.add_argument("-m", "--multirun", action="store_true",
                   help="Hydra multirun: sweep key=a,b (or range(...), choice(...)) overrides, one job per "
                        "combination, each in its own output directory (output_dir/key=value,...)")


def jobs(args) -> list[list[str]]:
    """The override lists to run: every combination of the sweeps with ``-m``, else the overrides as given."""
    from snapgen.config import sweep

    return sweep(args.overrides) if args.multirun else [list(args.overrides)]


def override_keys(overrides) -> list[str]:
    """The dotted keys that ``key=value`` overrides set (Hydra's ``+key`` / ``~key`` prefixes dropped)."""
    return [o.split("=", 1)[0].strip().lstrip("+~") for o in overrides or () if o.split("=", 1)[0].strip()]


def _sets(override: str, key: str) -> bool:
    """Whether setting ``override`` sets ``key`` or something under it (or ``key`` is under it)."""
    return key == override or key.startswith((override + ".", override + "[")) or override.startswith(key + ".")


@contextmanager
def blame_overrides(file, overrides):
    """A :class:`UserError` reported against ``file`` for a key that a command-line override set is the
    command line's: ``error: <command line>: KEY: MESSAGE``."""
    try:
        yield
    except UserError as e:
        keys = override_keys(overrides)
        if e.file == str(file) and e.key and any(_sets(k, e.key) for k in keys):
            raise type(e)(e.message, file=COMMAND_LINE, key=e.key) from None
        raise


__all__ = ["run_cli", "UserError", "blame_overrides", "add_overrides", "jobs", "COMMAND_LINE"]
