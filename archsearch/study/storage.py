"""Where a study lives: Optuna storage URLs, heartbeats, the budget lock, stale-trial recovery.

* ``sqlite:///PATH`` (the default, under the output directory), ``postgresql://...``, ``mysql://...``:
  Optuna's :class:`~optuna.storages.RDBStorage` with a heartbeat, so a trial whose worker died
  (even ``kill -9``) is marked FAILED after the grace period and re-queued
  (:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`).
* ``journal:///PATH``: Optuna's :class:`~optuna.storages.JournalStorage` over a journal file (for
  hosts sharing a file system without a database).

Nothing here adds tables: the storage opens in optuna-dashboard unchanged, and it shows what
Optuna shows: constraints are also written in the legacy list form that optuna-dashboard 0.21
reads (:func:`set_constraints`), and the proxy's intermediate evaluations of completed trials
are their intermediate values (:func:`report_intermediate`), its learning curves. Only Optuna's public API is
used: a trial's storage id comes from ``BaseStorage`` (:func:`trial_id`).
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Iterator

import optuna
from optuna.trial import TrialState

from snapgen.errors import UserError

RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")
JOURNAL = "journal"


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def check_storage_url(url: str, *, file: str | None = None) -> None:
    if "://" not in url:
        raise UserError(f"not a storage URL: {url!r}; expected sqlite:///PATH, postgresql://..., "
                        "mysql://... or journal:///PATH", file=file, key="storage")
    sch = _scheme(url)
    if sch not in RDB_SCHEMES + (JOURNAL,):
        raise UserError(f"unknown storage scheme {sch!r}; allowed: {', '.join(RDB_SCHEMES + (JOURNAL,))}", file=file,
                        key="storage")
    if sch == JOURNAL and not url.split("://", 1)[1].lstrip("/"):
        raise UserError("journal:///PATH needs a file path", file=file, key="storage")


def local_path(url: str) -> Path | None:
    """The file behind a sqlite or journal URL (None for a server)."""
    sch = _scheme(url)
    if sch == "sqlite":
        p = url.split(":///", 1)[1] if ":///" in url else ""
        return Path(p) if p and p != ":memory:" else None
    if sch == JOURNAL:
        rest = url.split("://", 1)[1]
        return Path(rest[1:] if rest.startswith("//") else rest)  # journal:///abs or journal://rel
    return None


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 2):
    sch = _scheme(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sch == JOURNAL:
            from optuna.storages.journal import JournalFileBackend

            path = local_path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        p = local_path(url)
        engine_kwargs = {}
        if sch == "sqlite":
            if p is not None:
                p.parent.mkdir(parents=True, exist_ok=True)
            # Several local worker processes share one SQLite file: wait for its lock instead of failing.
            engine_kwargs = {"connect_args": {"timeout": 120}}
        else:
            engine_kwargs = {"pool_pre_ping": True}
        kw = {}
        if heartbeat_interval:
            kw = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period or 3 * heartbeat_interval,
                      heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry))
        for attempt in range(4):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kw)
            except Exception as e:  # unreachable server, bad credentials, missing driver
                # Workers starting together on a fresh database race to create Optuna's tables: the
                # loser sees a unique-key violation; the tables exist by then, so try again.
                if attempt < 3 and "IntegrityError" in type(e).__name__ + str(e)[:200]:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise UserError(f"cannot open storage: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                                key="storage") from None


# ---- trials through the public storage API ---------------------------------------------------------
LEGACY_CONSTRAINTS = "constraints"  # the system attribute optuna-dashboard reads: a list of values


def trial_id(storage, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of ``study_name`` (Trial and FrozenTrial keep theirs private)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def id_of(trial: optuna.Trial) -> int:
    return trial_id(trial.storage, trial.study.study_name, trial.number)


def set_constraints(trial: optuna.Trial, values: dict[str, float]) -> None:
    """Each constraint by name (Optuna 5's ``trial.set_constraint``, what Optuna and this project read)
    and, in the same order, the legacy ``constraints`` list: optuna-dashboard 0.21 reads only that one
    and showed every trial feasible without it. Optuna reads the list as extra keys "0", "1", ...
    (same values, so feasibility is unchanged); :func:`named_constraints` leaves them out."""
    for name, v in values.items():
        trial.set_constraint(name, v)
    trial.storage.set_trial_system_attr(id_of(trial), LEGACY_CONSTRAINTS, [float(v) for v in values.values()])


def named_constraints(t) -> dict[str, float]:
    """``t.constraints`` without the legacy list's positional copies (their keys are "0", "1", ...;
    constraint names are expressions such as "params <= 6e8", never bare digits)."""
    return {k: v for k, v in t.constraints.items() if not k.isdigit()}


def report_intermediate(trial: optuna.Trial, step: int, value: float) -> None:
    """An intermediate value of a multi-objective trial: ``Trial.report`` refuses them (Optuna cannot
    prune such trials), so this is the public storage call it would make; optuna-dashboard draws them
    as learning curves. Only for trials that are about to COMPLETE: Optuna's TPE (and CMA-ES) samplers
    rank PRUNED trials by their last intermediate value with ``study.direction``, which raises in a
    multi-objective study, so an early-stopped trial keeps its rungs in the ``evals`` user attribute
    alone (the early stopping and archsearch's dashboard read them there)."""
    trial.storage.set_trial_intermediate_value(id_of(trial), int(step), float(value))


# ---- the budget lock ------------------------------------------------------------------------------
@contextlib.contextmanager
def budget_lock(url: str, study_name: str) -> Iterator[None]:
    """Serialise "count the trials, then start one" across workers, so that ``n_trials`` is exact
    (Optuna's MaxTrialsCallback may overshoot by one trial per extra worker).

    Optuna has no such lock, so this is ours: an advisory lock of the database server for PostgreSQL
    and MySQL, a file lock beside the database/journal file for SQLite and journal storages."""
    sch = _scheme(url)
    if sch in ("postgresql", "postgres", "mysql"):
        import sqlalchemy as sa
        import zlib

        key = zlib.crc32(f"archsearch:{study_name}".encode()) & 0x7FFFFFFF
        engine = _lock_engine(url)
        with engine.connect() as conn:
            if sch == "mysql":
                conn.execute(sa.text("SELECT GET_LOCK(:k, 600)"), {"k": f"archsearch:{study_name}"})
            else:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                if sch == "mysql":
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:k)"), {"k": f"archsearch:{study_name}"})
                else:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    p = local_path(url)
    if p is None:
        yield
        return
    from snapgen.cache import file_lock

    with file_lock(p.with_name(p.name + f".{study_name}.lock")):
        yield


_ENGINES: dict = {}


def _lock_engine(url: str):
    import sqlalchemy as sa

    if url not in _ENGINES:
        _ENGINES[url] = sa.create_engine(url, poolclass=sa.pool.NullPool)
    return _ENGINES[url]


# ---- who runs a trial, and is it still alive ------------------------------------------------------
def _proc_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks
    except (OSError, IndexError):
        return None


def worker_identity() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _proc_start(pid)}


def _alive(worker: dict) -> bool:
    pid = int(worker.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = worker.get("start")
    return start is None or _proc_start(pid) in (None, start)


def fail_orphans(storage, study: optuna.Study, max_retry: int = 2) -> list[int]:
    """RUNNING trials whose worker was a process of this host that no longer exists (``kill -9``,
    power loss) are failed now and re-queued, without waiting for the heartbeat's grace period.
    Trials of other hosts are left to the heartbeat (RDB storages)."""
    host = socket.gethostname()
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if not isinstance(w, dict) or w.get("host") != host or _alive(w):
            continue
        try:
            tid = trial_id(storage, study.study_name, t.number)
            if storage.set_trial_state_values(tid, state=TrialState.FAIL):
                failed.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry(study, storage.get_trial(tid))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other hosts' silent trials (RDB heartbeat)
    return failed


class Heartbeat:
    """Record a running trial's heartbeat every ``interval`` seconds (RDB storages; the same as
    Optuna's ``optimize`` does, which this ask/tell loop replaces)."""

    def __init__(self, storage, trial_id: int):
        import threading

        self.storage, self.trial_id = storage, trial_id
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True) if self.interval else None

    def _loop(self):
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a transient database error must not kill the trial
                pass
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread:
            self._stop.set()
            self._thread.join()
