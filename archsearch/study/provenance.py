"""What a run leaves beside the Optuna storage, so every number can be traced back.

* ``<output_dir>/study.yaml``           the resolved study (defaults filled in, overrides applied)
* ``<output_dir>/provenance.jsonl``     one line per invocation: code version, command, host, versions
* ``<output_dir>/trials/<n>/trial.json`` the resolved ArchSpec, proxy config, seed, metrics, timings, state
* ``<output_dir>/trials/<n>/spec.yaml``  the ArchSpec alone (``snapgen``/``archsearch cost`` read it)

(after NVlabs/edm's ``training_options.json`` / ``stats.jsonl``). Files are written atomically.
"""
from __future__ import annotations

import datetime
import functools
import json
import platform
import socket
import subprocess
import sys
from pathlib import Path

from snapgen.cache import atomic_write_bytes, atomic_write_json

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """git describe / commit / dirty flag of the checkout the code runs from (None outside git)."""

    def git(*args):
        try:
            r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("snapgen-archsearch")
    except PackageNotFoundError:
        pkg = None
    return {"describe": git("describe", "--always", "--dirty", "--tags"), "commit": commit,
            "dirty": bool(status) if status is not None else None, "package_version": pkg}


def environment() -> dict:
    import optuna
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__,
            "host": socket.gethostname(), "platform": platform.platform()}


def write_study_files(study, out_dir: Path, *, workers: int) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "study.yaml", study.resolved_yaml().encode())
    rec = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "code_version": code_version(), "command": sys.argv, "overrides": study.overrides, "workers": workers,
           "study_file": str(study.file), **environment()}
    with open(out_dir / "provenance.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def write_trial(out_dir: Path, number: int, record: dict, spec=None) -> Path:
    d = out_dir / "trials" / str(number)
    d.mkdir(parents=True, exist_ok=True)
    if spec is not None:
        import yaml

        atomic_write_bytes(d / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())
    atomic_write_json(d / "trial.json", record)
    return d
