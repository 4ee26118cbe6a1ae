"""Per-unit latency lookup tables: calibration (resumable), prediction, validation.

A table is a JSON-lines file, readable on any OS (a table built on a Mac with Core ML on the
Neural Engine drives a search on a Linux GPU server):

* line 1, the header: backend, device, mode, threads, dtype, target ``latent_size``,
  ``calib_latent``, ``context_len``, the search space (file name, kind, hash of what decides its
  blocks) and the machine;
* one line per unit: ``{"key": ..., "ms": ..., "at": LATENT, "iqr": ..., "n": ...}``, the unit
  timed at latent ``at`` (the calibration latent, or the target for attention cores);
* probe lines ``{"probe": KEY, "ms": ..., "at": TARGET}``: a few units per class re-timed at
  the target latent, which fix that class's calibration-to-target correction;
* ``{"session_s": ...}`` lines adding up the calibration time, ``{"done": true}`` at the end.

Calibration appends as it goes and skips keys already present, so an interrupted run resumes.

Prediction: sum over an architecture's units (:func:`~archsearch.latency.units.units_of`) of
``ms`` at the target, where a unit timed at the calibration latent is scaled by the pixel ratio
``(latent_size / calib_latent)**2`` (``scaling: probes`` tables also apply a per-class correction,
the median probe ratio). Attention cores are always timed at the target.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from archsearch.latency.backends import Backend, get_backend, machine_info
from archsearch.latency.measure import measure_latency
from archsearch.latency.models import spec_kind
from archsearch.latency.timing import TimingPolicy, time_callable, torch_threads
from archsearch.latency.units import (AT_TARGET, UNSCALED, attention_core_removed, build_unit, enumerate_units, key_of,
                                      unit_class, unit_of, units_of)
from snapgen.errors import UserError

FORMAT = "snapgen-latency-table"
VERSION = 1
# Per unit: one warm-up, at least 2 samples and 0.1 s, at most 7 samples / 1.5 s. An architecture
# sums ~100 units, so per-unit noise averages out; the budget keeps a space's ~1000 units in minutes.
UNIT_POLICY = TimingPolicy(warmup=1, min_repeats=2, max_repeats=7, min_time_s=0.1, max_time_s=1.5, rel_tol=0.03,
                           rel_iqr=0.1)
E2E_POLICY = TimingPolicy(warmup=1, min_repeats=3, max_repeats=10, min_time_s=0.5, max_time_s=60.0, rel_tol=0.02,
                          rel_iqr=0.1)
# Validation at the target latent: whole UNets take tens of seconds each on a laptop CPU; 2-3 runs
# after a warm-up (the CPU clock is stable to a few percent; the wall clock needs --max-repeats).
VALIDATE_POLICY = TimingPolicy(warmup=1, min_repeats=2, max_repeats=3, min_time_s=0.0, max_time_s=60.0, rel_tol=0.02,
                               rel_iqr=0.05)


# ---- the search space a table belongs to ---------------------------------------------------------
def space_fingerprint(space) -> dict[str, Any]:
    """File name, kind and a hash of what decides the space's blocks (search section and base
    preset), so editing a description does not invalidate a table but changing a choice does."""
    from snapgen.presets import load_space_file, resolve_preset_dict

    data = load_space_file(space.path)
    what = {"kind": space.kind, "search": data.get("search"),
            "base": resolve_preset_dict(space.presets, space.base, file=str(space.path))}
    blob = json.dumps(what, sort_keys=True, default=str).encode()
    return {"file": Path(space.path).name, "kind": space.kind, "hash": hashlib.sha256(blob).hexdigest()[:16]}


def _load_space(space):
    from archsearch.space import SearchSpace

    return space if space is None or isinstance(space, SearchSpace) else SearchSpace.load(space)


# ---- reading ---------------------------------------------------------------------------------------
@dataclass
class LatencyTable:
    path: Path
    header: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    done: bool = False

    @classmethod
    def read(cls, path: str | Path) -> "LatencyTable":
        p = Path(path)
        if not p.is_file():
            raise UserError("table file not found", file=str(path))
        lines = p.read_text().splitlines()
        try:
            rows = [json.loads(x) for x in lines if x.strip()]
        except json.JSONDecodeError as e:
            # A run killed mid-write leaves at most a partial last line: drop it, keep the rest.
            good = []
            for i, x in enumerate(lines):
                if not x.strip():
                    continue
                try:
                    good.append(json.loads(x))
                except json.JSONDecodeError:
                    if i != len(lines) - 1:
                        raise UserError(f"not a latency table (line {i + 1}: {e.msg})", file=str(path)) from None
            rows = good
        if not rows or not isinstance(rows[0], dict) or rows[0].get("table") != FORMAT:
            raise UserError(f"not a latency table (first line must be a {FORMAT!r} header)", file=str(path))
        if rows[0].get("version") != VERSION:
            raise UserError(f"table format version {rows[0].get('version')} is not supported (want {VERSION})",
                            file=str(path))
        t = cls(path=p, header=rows[0])
        for r in rows[1:]:
            if "key" in r:
                t.entries[r["key"]] = r
            elif "probe" in r:
                t.probes[r["probe"]] = r
            elif "session_s" in r:
                t.seconds += float(r["session_s"])
            elif r.get("done"):
                t.done = True
        return t

    # -- checks -----------------------------------------------------------------------------------
    def check_space(self, space) -> None:
        fp = space_fingerprint(space)
        mine = self.header.get("space", {})
        if mine.get("kind") != fp["kind"] or mine.get("hash") != fp["hash"]:
            raise UserError(f"table was calibrated for the {mine.get('kind')} space {mine.get('file')!r} (hash "
                            f"{mine.get('hash')}), not for {space.path} ({fp['kind']}, hash {fp['hash']}): "
                            "recalibrate with `archsearch calibrate`", file=str(self.path))

    def check_backend(self, backend: Backend) -> None:
        h = self.header
        for k in ("backend", "device", "mode", "threads", "dtype", "clock"):
            mine, want = h.get(k, "wall" if k == "clock" else None), backend.describe()[k]
            if mine != want:
                raise UserError(f"table was calibrated with {k}={mine!r}, not {want!r}", file=str(self.path),
                                key=f"--{k}" if k not in ("mode",) else "--compile")

    # -- prediction --------------------------------------------------------------------------------
    @property
    def scaling(self) -> str:
        return self.header.get("scaling", "pixels")

    def corrections(self) -> dict[str, float]:
        """Per unit class: measured target time / (calibration time x pixel ratio), median over probes
        (diagnostic; applied to predictions only in ``scaling: probes`` tables)."""
        ratio = self.pixel_ratio
        by_class: dict[str, list[float]] = defaultdict(list)
        for k, p in self.probes.items():
            e = self.entries.get(k)
            if e and e["ms"] > 0 and e["at"] != p["at"]:
                by_class[unit_class(unit_of(k))].append(p["ms"] / (e["ms"] * ratio))
        return {c: float(np.clip(np.median(v), 0.5, 2.0)) for c, v in by_class.items()}

    @property
    def pixel_ratio(self) -> float:
        return (self.header["latent_size"] / self.header["calib_latent"]) ** 2

    def unit_ms(self, key: str, corrections: dict[str, float]) -> float:
        if self.scaling == "probes" and key in self.probes:
            return float(self.probes[key]["ms"])
        e = self.entries.get(key)
        if e is None:
            u = unit_of(key)
            raise UserError(f"table has no entry for unit {u['u']} {key}: it does not cover this architecture "
                            "(a space other than the one calibrated?); recalibrate", file=str(self.path))
        u = unit_of(key)
        if e["at"] == self.header["latent_size"] or u["u"] in UNSCALED or u.get("fixed"):
            return float(e["ms"])
        cls = unit_class(u)
        return float(e["ms"]) * self.pixel_ratio * corrections.get(cls, 1.0)


# ---- the study-layer API ---------------------------------------------------------------------------
class LatencyModel:
    """Latency of an architecture in ms: predicted from a table, or measured.

    ``LatencyModel.from_table(path, space)`` — ``{mode: table, path: ...}``; ``predict`` costs
    well under a millisecond. ``LatencyModel.measuring(backend, device)`` — ``{mode: measure}``;
    ``predict`` builds and times the model (seconds to minutes).
    """

    def __init__(self, *, table: LatencyTable | None = None, backend: Backend | None = None,
                 context_len: int = 77, policy: TimingPolicy | None = None):
        self.table, self.backend, self.context_len, self.policy = table, backend, context_len, policy
        self._corr = table.corrections() if table and table.scaling == "probes" else {}

    @classmethod
    def from_table(cls, path: str | Path, space=None) -> "LatencyModel":
        t = LatencyTable.read(path)
        sp = _load_space(space)
        if sp is not None:
            t.check_space(sp)
        return cls(table=t, context_len=t.header.get("context_len", 77))

    @classmethod
    def measuring(cls, backend: str = "torch", device: str | None = None, *, threads: int | None = None,
                  mode: str = "eager", dtype: str = "float32", context_len: int = 77,
                  policy: TimingPolicy | None = None, clock: str = "wall") -> "LatencyModel":
        be = get_backend(backend, device, threads=threads, mode=mode, dtype=dtype, clock=clock)
        if not be.can_time:
            raise UserError(f"the {be.name} backend cannot time on this machine (Core ML predictions need macOS); "
                            "use a table calibrated on a Mac", key="latency.backend")
        return cls(backend=be, context_len=context_len, policy=policy or E2E_POLICY)

    @property
    def latent_size(self) -> int | None:
        return self.table.header["latent_size"] if self.table else None

    def describe(self) -> dict[str, Any]:
        if self.table:
            h = self.table.header
            return {"mode": "table", "path": str(self.table.path), **{k: h.get(k) for k in (
                "backend", "device", "threads", "clock", "latent_size", "calib_latent", "space")}}
        return {**self.backend.describe(), "mode": "measure", "torch_mode": self.backend.mode}

    def predict(self, spec, latent_size: int | None = None) -> float:
        """Latency in ms of one forward pass (batch 1) at ``latent_size`` (default: the table's)."""
        if self.table is None:
            res = measure_latency(spec, self.backend, latent_size=latent_size or 128, context_len=self.context_len,
                                  policy=self.policy, breakdown=False)
            return float(res.median_ms)
        return sum(self.breakdown(spec, latent_size).values())

    def breakdown(self, spec, latent_size: int | None = None) -> dict[str, float]:
        """Predicted ms per unit type (table mode)."""
        h = self.table.header
        L = latent_size or h["latent_size"]
        if L != h["latent_size"]:
            raise UserError(f"table was calibrated for latent {h['latent_size']}, not {L}", file=str(self.table.path),
                            key="--latent-size")
        kind = spec_kind(spec)
        if kind != h["space"]["kind"]:
            raise UserError(f"a {h['space']['kind']} table cannot predict a {kind}", file=str(self.table.path))
        out: dict[str, float] = defaultdict(float)
        for _, u in units_of(spec, L, self.context_len):
            out[u["u"]] += self.table.unit_ms(key_of(u), self._corr)
        return dict(out)


# ---- calibration -----------------------------------------------------------------------------------
def _header(space, backend: Backend, latent_size: int, calib_latent: int, context_len: int,
            scaling: str = "pixels") -> dict[str, Any]:
    return {"table": FORMAT, "version": VERSION, **backend.describe(), "latent_size": latent_size,
            "calib_latent": calib_latent, "context_len": context_len, "scaling": scaling,
            "space": space_fingerprint(space),
            "machine": machine_info(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _measure_unit(unit: dict, latent: int, target: int, backend: Backend, policy: TimingPolicy) -> dict:
    f = latent / target
    if unit["u"] in ("sdpa", "qknorm"):
        u = unit if unit.get("fixed") else dict(unit, n=int(round(unit["n"] * f * f)))
        h = w = 1
    else:
        h, w = (max(1, int(round(unit.get("h", 1) * f))), max(1, int(round(unit.get("w", 1) * f))))
        u = unit
    with torch_threads(backend.threads):
        module, inputs = build_unit(u, h, w)
        prep = backend.prepare(module, inputs)
    if prep.fn is None:
        raise UserError(f"the {backend.name} backend cannot time on this machine: {prep.note}", key="--backend")
    with attention_core_removed(unit["u"] == "sa"):
        t = time_callable(prep.fn, policy, threads=backend.threads, sync=prep.sync, clock=backend.clock)
    return {"ms": t.median_ms, "at": latent, "iqr": t.iqr_ms, "n": t.repeats}


def pick_probes(units: list[dict], per_class: int) -> list[dict]:
    """Up to ``per_class`` units of each scaled class, spread over the class's sizes (by channels x
    pixels), deterministic."""
    by: dict[str, list[dict]] = defaultdict(list)
    for u in units:
        if u["u"] not in UNSCALED and u["u"] not in AT_TARGET and not u.get("fixed"):
            by[unit_class(u)].append(u)
    out = []
    size = lambda u: (u.get("h", 1) * u.get("w", 1) * max(u.get("c", 0), u.get("cin", 0), u.get("c1", 0)), key_of(u))  # noqa: E731
    for cls, us in sorted(by.items()):
        us = sorted(us, key=size)
        if per_class <= 0:
            continue
        idx = sorted({int(round((j + 1) * (len(us) - 1) / (per_class + 1))) for j in range(per_class)})
        out += [us[i] for i in idx]
    return out


def calibrate(space, backend: Backend, out: str | Path, *, latent_size: int = 128, calib_latent: int | None = None,
              context_len: int = 77, probes: int = 0, policy: TimingPolicy | None = None,
              progress: bool = True, scaling: str = "pixels") -> LatencyTable:
    """Measure every unit ``space`` can produce once (resuming ``out`` if it exists).

    ``scaling="pixels"`` (default) scales units timed at ``calib_latent`` by the pixel ratio alone;
    ``"probes"`` also multiplies each class by its median probe ratio (``probes`` units per class
    re-timed at the target). With few probes on a noisy machine the correction adds more error than
    it removes (docs/latency.md), so probes are otherwise a recorded diagnostic."""
    from snapgen.progress import progress as progress_bar

    space = _load_space(space)
    if not backend.can_time:
        raise UserError(f"the {backend.name} backend cannot time on this machine (Core ML predictions need macOS): "
                        "calibrate on a Mac and copy the table here", key="--backend")
    calib_latent = calib_latent or latent_size
    n = space.preset(space.base)
    depth = (n.num_stages - 1) if space.kind == "unet" else 0
    for name, v in (("--latent-size", latent_size), ("--calib-latent", calib_latent)):
        if v <= 0 or v % (2 ** depth):
            raise UserError(f"must be a positive multiple of {2 ** depth}, got {v}", key=name)
    if calib_latent > latent_size:
        raise UserError(f"must be <= --latent-size ({latent_size}), got {calib_latent}", key="--calib-latent")
    if scaling not in ("pixels", "probes"):
        raise UserError(f"unknown scaling {scaling!r}; allowed: pixels, probes", key="--scaling")
    if scaling == "probes" and probes < 1:
        raise UserError("scaling 'probes' needs --probes >= 1", key="--probes")
    policy = policy or UNIT_POLICY
    out = Path(out)
    header = _header(space, backend, latent_size, calib_latent, context_len, scaling)
    if out.exists() and out.stat().st_size > 0:
        text = out.read_text()
        if not text.endswith("\n"):  # killed mid-write: drop the partial last line before appending
            out.write_text(text[:text.rfind("\n") + 1])
        table = LatencyTable.read(out)
        table.check_space(space)
        table.check_backend(backend)
        for k in ("latent_size", "calib_latent", "context_len", "scaling"):
            if table.header.get(k, "pixels" if k == "scaling" else None) != header[k]:
                raise UserError(f"existing table has {k}={table.header.get(k)}, not {header[k]}: resume with the same "
                                "settings or write a new table", file=str(out), key=f"--{k.replace('_', '-')}")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(header) + "\n")
        table = LatencyTable.read(out)
    units = enumerate_units(space, latent_size, context_len)
    todo = [("key", u) for u in units if key_of(u) not in table.entries]
    todo += [("probe", u) for u in pick_probes(units, probes) if key_of(u) not in table.probes]
    t0 = time.perf_counter()
    try:
        with open(out, "a") as f, progress_bar(todo, desc=f"calibrate {space.path.name}", unit="unit",
                                                disable=not progress, dynamic_ncols=True) as bar:
            for what, u in bar:
                bar.set_postfix_str(u["u"], refresh=False)
                at = latent_size if (what == "probe" or u["u"] in AT_TARGET) else calib_latent
                row = _measure_unit(u, at, latent_size, backend, policy)
                row = {"key" if what == "key" else "probe": key_of(u), **row}
                f.write(json.dumps(row) + "\n")
                f.flush()
                (table.entries if what == "key" else table.probes)[key_of(u)] = row
            if todo or not table.done:
                f.write(json.dumps({"session_s": round(time.perf_counter() - t0, 1)}) + "\n")
                f.write(json.dumps({"done": True, "units": len(units)}) + "\n")
    except KeyboardInterrupt:
        with open(out, "a") as f:
            f.write(json.dumps({"session_s": round(time.perf_counter() - t0, 1)}) + "\n")
        raise
    return LatencyTable.read(out)


# ---- validation ------------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    n: int
    median_abs_pct_error: float
    mean_abs_pct_error: float
    p90_abs_pct_error: float
    max_abs_pct_error: float
    mean_pct_error: float  # signed: > 0 means the table over-predicts
    spearman: float
    predict_ms_per_trial: float  # cost of one table lookup
    latent_size: int
    backend: str
    device: str
    threads: int
    clock: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate(space, table_path: str | Path, backend: Backend, *, n: int = 20, seed: int = 1234,
             out: str | Path | None = None, policy: TimingPolicy | None = None, progress: bool = True,
             context_len: int | None = None, shard: tuple[int, int] = (0, 1)) -> ValidationReport:
    """Compare table predictions with end-to-end measurements on ``n`` random held-out
    architectures of ``space`` (``space.sample_random(n, seed)``), at the table's latent size.
    With ``out``, each measured architecture is appended there and skipped when re-run;
    ``shard=(k, n)`` measures only architectures ``i % n == k`` (several processes sharing ``out``;
    a last run without a shard reports all of them)."""
    from scipy.stats import spearmanr
    from snapgen.progress import progress as progress_bar

    space = _load_space(space)
    lm = LatencyModel.from_table(table_path, space)
    lm.table.check_backend(backend)
    L = lm.latent_size
    specs = space.sample_random(n, seed=seed)
    if len(specs) < n:
        raise UserError(f"the space yields only {len(specs)} distinct valid architectures, not {n}", key="--n")
    done: dict[str, dict] = {}
    if out and Path(out).is_file():
        for line in Path(out).read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a partial line from a killed run
                continue
            done[r["spec_key"]] = r
    rows = []
    t_pred = []
    fh = open(out, "a") if out else None
    try:
        for i, spec in enumerate(progress_bar(specs, desc="validate", unit="arch", disable=not progress, dynamic_ncols=True)):
            t0 = time.perf_counter()
            pred = lm.predict(spec, L)
            t_pred.append(time.perf_counter() - t0)
            skey = hashlib.sha256(spec.to_json(sort_keys=True).encode()).hexdigest()[:16] + f"@{L}"
            if skey in done:
                row = dict(done[skey], predicted_ms=pred)
            elif i % shard[1] != shard[0]:
                continue
            else:
                res = measure_latency(spec, backend, latent_size=L, context_len=context_len or lm.context_len,
                                      policy=policy or VALIDATE_POLICY, breakdown=False)
                row = {"spec_key": skey, "index": i, "measured_ms": res.median_ms, "iqr_ms": res.iqr_ms,
                       "repeats": res.repeats, "loadavg_1m": res.machine.get("loadavg_1m"), "spec": spec.to_dict()}
                if fh:
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
                row = dict(row, predicted_ms=pred)
            row["pct_error"] = (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"] * 100
            rows.append(row)
    finally:
        if fh:
            fh.close()
    err = np.array([r["pct_error"] for r in rows])
    rho = float(spearmanr([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]).statistic) \
        if len(rows) > 2 else float("nan")
    bd = backend.describe()
    return ValidationReport(n=len(rows), median_abs_pct_error=float(np.median(np.abs(err))),
                            mean_abs_pct_error=float(np.mean(np.abs(err))),
                            p90_abs_pct_error=float(np.percentile(np.abs(err), 90)),
                            max_abs_pct_error=float(np.max(np.abs(err))), mean_pct_error=float(np.mean(err)),
                            spearman=rho, predict_ms_per_trial=float(np.median(t_pred) * 1e3), latent_size=L,
                            backend=bd["backend"], device=bd["device"], threads=bd["threads"], clock=bd["clock"],
                            rows=rows)
