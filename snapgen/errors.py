"""User-facing errors: one clear line, exit status 2, never a traceback."""
from __future__ import annotations

import sys
from contextlib import contextmanager


class UserError(Exception):
    """A mistake in user input: a config file, a CLI flag, a data path.

    Rendered as ``error: FILE: KEY: MESSAGE`` (parts omitted when unknown).
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.message = message
        self.file = None if file is None else str(file)
        self.key = key
        super().__init__(self.line())

    def line(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        return ": ".join(parts + [self.message])

    def with_context(self, *, file: str | None = None, key: str | None = None) -> "UserError":
        return type(self)(self.message, file=self.file or file, key=self.key or key)


class DataError(UserError):
    """Missing, corrupt or unverifiable data (exit status 2)."""


class TrainingError(UserError):
    """Training produced something that must not be trusted (non-finite loss...)."""

    exit_code = 3


@contextmanager
def user_errors():
    """Turn UserError into one line on stderr and a non-zero exit."""
    try:
        yield
    except UserError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
