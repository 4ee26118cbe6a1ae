"""Progress bars that suit where the output goes: tqdm's bar on a terminal, one plain line per event
on a pipe or a log file (no carriage-return frames, e.g. in a study's ``logs/worker-*.log``).

Every long loop of both packages makes its bar with :func:`progress`; it takes tqdm's arguments
and returns an object with tqdm's interface (iteration, ``update``, ``set_postfix``, ``write``,
``n`` / ``refresh``, ``close``, context manager). In line mode a line is written when the loop
starts, at most every ``line_interval`` seconds while it runs, and when it ends; the line is
tqdm's own meter (``tqdm.format_meter``) without the bar.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable

LINE_INTERVAL = 15.0  # seconds between two lines of one loop in line mode
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def is_terminal(file) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable: Iterable | None = None, *, file=None, line_interval: float = LINE_INTERVAL, **kwargs: Any):
    """``tqdm(iterable, file=file, **kwargs)`` on a terminal, :class:`LineProgress` otherwise.

    ``file`` defaults to ``sys.stderr``; ``disable=True`` gives a silent bar either way."""
    file = sys.stderr if file is None else file
    if is_terminal(file):
        from tqdm import tqdm

        return tqdm(iterable, file=file, **kwargs)
    return LineProgress(iterable, file=file, line_interval=line_interval, **kwargs)


class LineProgress:
    """tqdm's interface, writing one line per event instead of redrawing a bar (see the module doc).

    Hand-written because tqdm has no line mode; the formatting is tqdm's ``format_meter``."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str | None = None, total: float | None = None,
                 initial: float = 0, unit: str = "it", disable: bool = False, file=None,
                 line_interval: float = LINE_INTERVAL, **_tqdm_only: Any):
        # tqdm's display options (mininterval, leave, dynamic_ncols, ...) mean nothing without a bar
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.desc, self.total, self.n, self.initial, self.unit = desc or "", total, initial, initial, unit
        self.disable = disable
        self.fp = sys.stderr if file is None else file
        self.interval = line_interval
        self.postfix = ""
        self._start = time.monotonic()
        self._last_line = float("-inf")
        self._last_state: tuple | None = None
        self._closed = False
        self._emit(force=True)

    # ---- tqdm's interface ------------------------------------------------------------------------
    def __iter__(self):
        if self.iterable is None:
            raise TypeError("LineProgress over no iterable")
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return int(self.total or 0)

    def update(self, n: float = 1) -> None:
        self.n += n
        self._emit()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())
        if refresh:
            self._emit()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)
        if refresh:
            self._emit()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""
        if refresh:
            self._emit()

    def refresh(self, *args, **kwargs) -> None:
        self._emit()

    def write(self, s: str, file=None, end: str = "\n") -> None:
        fp = file or self.fp
        fp.write(s + end)
        fp.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._emit(force=True)

    # ---- the line --------------------------------------------------------------------------------
    def _emit(self, *, force: bool = False) -> None:
        if self.disable:
            return
        now = time.monotonic()
        state = (self.n, self.postfix, self.desc)
        if state == self._last_state:
            return  # nothing happened since the last line
        if not force and now - self._last_line < self.interval and (self.total is None or self.n < self.total):
            return
        from tqdm import tqdm

        line = tqdm.format_meter(self.n, self.total, now - self._start, prefix=self.desc, unit=self.unit,
                                 postfix=self.postfix or None, bar_format=LINE_FORMAT, initial=self.initial)
        self.fp.write(line.replace("\r", "") + "\n")
        self.fp.flush()
        self._last_line, self._last_state = now, state
