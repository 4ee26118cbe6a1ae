"""The evaluations log: one JSON line per finished evaluation, so a killed measurement resumes.

A line is appended, flushed and fsynced under an exclusive lock (:func:`snapgen.cache.file_lock`,
the lock the artefact cache uses), by whichever process finished the evaluation. A kill -9 can cut
at most the line being written: the reader skips a line that does not parse, and the next append
first ends such a line, so nothing after it is lost. The first record of a key wins.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from snapgen.cache import file_lock


def evaluation_key(spec_hash: str, seed: int, settings_key: str) -> str:
    return f"{spec_hash}|{int(seed)}|{settings_key}"


class EvaluationLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = self.path.with_name(self.path.name + ".lock")

    def read(self) -> dict[str, dict]:
        done: dict[str, dict] = {}
        if not self.path.is_file():
            return done
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that evaluation runs again
            if isinstance(rec, dict) and "key" in rec and rec["key"] not in done:
                done[rec["key"]] = rec
        return done

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, allow_nan=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock):
            with open(self.path, "ab+") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # the end of a line cut by a kill
                        f.write(b"\n")
                f.write(line.encode())
                f.flush()
                os.fsync(f.fileno())
