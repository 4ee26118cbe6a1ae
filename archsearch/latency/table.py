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
* anchor lines ``{"anchor": SPEC_KEY, "measured_ms": ..., "spec": {...}}``: a few architectures
  (never validation ones) measured end to end, spread through the unit timings, which fix the
  isolated-to-in-network ratio;
* ``{"session_s": ...}`` lines adding up the calibration time, ``{"done": true}`` at the end;
* ``{"validation": {...}}``: the summary of the last ``--validate`` run (the study records it).

Calibration appends as it goes and skips keys already present, so an interrupted run resumes.

Prediction: sum over an architecture's units (:func:`~archsearch.latency.units.units_of`) of
``ms`` at the target, times ``anchor_scale``: units timed alone run a few percent slower than
inside the network, and the anchors fix the ratio (the median of measured / sum). By default
units are timed at the target latent; with a
smaller ``calib_latent`` a unit is scaled by the pixel ratio ``(latent_size / calib_latent)**2``
(``scaling: probes`` tables also apply a per-class correction, the median probe ratio); attention
cores are always timed at the target.
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    anchors: dict[str, dict[str, Any]] = field(default_factory=dict)
    validation: dict[str, Any] | None = None
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
            elif "anchor" in r:
                t.anchors[r["anchor"]] = r
            elif "validation" in r:
                t.validation = r["validation"]
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

    def mismatches(self, setting: dict[str, Any]) -> list[str]:
        """``key=table's != wanted`` for every key of ``setting`` (backend, device, mode, threads,
        dtype, clock, latent_size; None = any) on which the table differs."""
        h = self.header
        return [f"{k}={h.get(k, 'wall' if k == 'clock' else None)!r}, not {v!r}" for k, v in setting.items()
                if v is not None and h.get(k, "wall" if k == "clock" else None) != v]

    def check_setting(self, setting: dict[str, Any], allow_mismatch: bool = False, key: str | None = None) -> None:
        """A table is only trusted at the setting it was calibrated (and validated) at: one line
        naming what differs, unless ``allow_mismatch``."""
        bad = self.mismatches(setting)
        if bad and not allow_mismatch:
            first = next(k for k in setting if any(b.startswith(f"{k}=") for b in bad))
            raise UserError(f"table was calibrated with {'; '.join(bad)}: recalibrate at this setting, or allow "
                            "the mismatch (--allow-mismatch, latency.allow_mismatch: true)", file=str(self.path),
                            key=key or ("--compile" if first == "mode" else f"--{first.replace('_', '-')}"))

    def check_backend(self, backend: Backend, allow_mismatch: bool = False) -> None:
        self.check_setting(backend.describe(), allow_mismatch)

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

    @functools.cached_property
    def anchor_scale(self) -> float:
        """measured / predicted of whole networks: the median over the anchors of their measured
        time / the sum of their units' table times (1 without anchors). Units timed alone run a few
        percent slower than inside the network (docs/latency.md); one ratio, fixed on architectures
        that are never validation ones, corrects that without ever predicting <= 0."""
        from snapgen.decoder import DecoderSpec
        from snapgen.spec import ArchSpec

        cls = ArchSpec if self.header["space"]["kind"] == "unet" else DecoderSpec
        corr = self.corrections() if self.scaling == "probes" else {}
        v = []
        for a in self.anchors.values():
            us = units_of(cls.from_dict(a["spec"]), self.header["latent_size"], self.header.get("context_len", 77))
            keys = [key_of(u) for _, u in us]
            if all(k in self.entries for k in keys):  # an interrupted table: only complete anchors count
                v.append(a["measured_ms"] / sum(self.unit_ms(k, corr) for k in keys))
        return float(np.median(v)) if v else 1.0

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
    def from_table(cls, path: str | Path, space=None, setting: dict[str, Any] | None = None,
                   allow_mismatch: bool = False) -> "LatencyModel":
        """``setting``: what the caller will use the table for (backend, device, threads, clock,
        latent_size...; None values = any); a table calibrated otherwise is refused unless
        ``allow_mismatch``."""
        t = LatencyTable.read(path)
        sp = _load_space(space)
        if sp is not None:
            t.check_space(sp)
        if setting:
            t.check_setting(setting, allow_mismatch)
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
                "backend", "device", "threads", "clock", "latent_size", "calib_latent", "space")},
                "anchor_scale": self.table.anchor_scale, "validation": self.table.validation}
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
        k = self.table.anchor_scale
        for _, u in units_of(spec, L, self.context_len):
            out[u["u"]] += self.table.unit_ms(key_of(u), self._corr) * k
        return dict(out)


# ---- calibration -----------------------------------------------------------------------------------
def _header(space, backend: Backend, latent_size: int, calib_latent: int, context_len: int,
            scaling: str = "pixels") -> dict[str, Any]:
    return {"table": FORMAT, "version": VERSION, **backend.describe(), "latent_size": latent_size,
            "calib_latent": calib_latent, "context_len": context_len, "scaling": scaling,
            "space": space_fingerprint(space),
            "machine": machine_info(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _measure_unit(unit: dict, latent: int, target: int, backend: Backend, policy: TimingPolicy,
                  channels_last: bool = False) -> dict:
    f = latent / target
    if unit["u"] in ("sdpa", "qknorm"):
        u = unit if unit.get("fixed") else dict(unit, n=int(round(unit["n"] * f * f)))
        h = w = 1
    else:
        h, w = (max(1, int(round(unit.get("h", 1) * f))), max(1, int(round(unit.get("w", 1) * f))))
        u = unit
    with torch_threads(backend.threads):
        module, inputs = build_unit(u, h, w)
        if channels_last:  # in the layout the network runs it in: timed alone in NCHW, a unit lies
            inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
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


def spec_key(spec, latent_size: int) -> str:
    """Identifies an architecture at a latent (validation rows, anchors)."""
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16] + f"@{latent_size}"


ANCHOR_SEED = 4321  # the anchors' sampling seed; validation (seed 1234 by default) skips anchors anyway


def calibrate(space, backend: Backend, out: str | Path, *, latent_size: int = 128, calib_latent: int | None = None,
              context_len: int = 77, probes: int = 0, policy: TimingPolicy | None = None,
              progress: bool = True, scaling: str = "pixels", anchors: int = 4,
              anchor_policy: TimingPolicy | None = None) -> LatencyTable:
    """Measure every unit ``space`` can produce once, then ``anchors`` architectures end to end
    (resuming ``out`` if it exists).

    Units are timed at ``calib_latent`` (default: the target ``latent_size``). The anchors fix the
    ratio the sum is multiplied by (:attr:`LatencyTable.anchor_scale`); ``anchors=0`` keeps the
    plain sum. ``scaling="pixels"`` scales units timed at a smaller ``calib_latent`` by the
    pixel ratio alone; ``"probes"`` also multiplies each class by its median probe ratio (``probes``
    units per class re-timed at the target). With few probes on a noisy machine the correction adds
    more error than it removes (docs/latency.md), so probes are otherwise a recorded diagnostic."""
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
    if anchors < 0:
        raise UserError(f"must be >= 0, got {anchors}", key="--anchors")
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
    # Anchors are spread through the unit timings, so that they see the same machine conditions.
    anchor_specs = space.sample_random(anchors, seed=ANCHOR_SEED) if anchors else []
    pending = [s for s in anchor_specs if spec_key(s, latent_size) not in table.anchors]
    for j, s in reversed(list(enumerate(pending))):
        todo.insert(int((j + 0.5) * len(todo) / len(pending)) if todo else 0, ("anchor", s))
    t0 = time.perf_counter()
    try:
        with open(out, "a") as f, progress_bar(todo, desc=f"calibrate {space.path.name}", unit="unit",
                                                disable=not progress, dynamic_ncols=True) as bar:
            for what, u in bar:
                if what == "anchor":
                    bar.set_postfix_str("anchor", refresh=False)
                    res = measure_latency(u, backend, latent_size=latent_size, context_len=context_len,
                                          policy=anchor_policy or VALIDATE_POLICY, breakdown=False)
                    row = {"anchor": spec_key(u, latent_size), "measured_ms": res.median_ms, "iqr_ms": res.iqr_ms,
                           "repeats": res.repeats, "loadavg_1m": res.machine.get("loadavg_1m"),
                           "spec": u.to_dict()}
                    table.anchors[row["anchor"]] = row
                else:
                    bar.set_postfix_str(u["u"], refresh=False)
                    at = latent_size if (what == "probe" or u["u"] in AT_TARGET) else calib_latent
                    # the tiny decoder runs channels-last (snapgen/decoder.py), the UNet channels-first
                    row = {what: key_of(u), **_measure_unit(u, at, latent_size, backend, policy,
                                                            channels_last=space.kind == "decoder")}
                    (table.entries if what == "key" else table.probes)[key_of(u)] = row
                f.write(json.dumps(row) + "\n")
                f.flush()
            if todo or not table.done:
                f.write(json.dumps({"session_s": round(time.perf_counter() - t0, 1)}) + "\n")
                f.write(json.dumps({"done": True, "units": len(units), "anchors": len(anchor_specs)}) + "\n")
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
    bias_pct: float  # mean signed error: > 0 means the table over-predicts
    within_10_pct: float  # share of architectures predicted within +-10% (in %)
    within_5_pct: float
    spearman: float
    predict_ms_per_trial: float  # cost of one table lookup
    latent_size: int
    backend: str
    device: str
    mode: str
    threads: int
    dtype: str
    clock: str
    anchor_scale: float  # the table's measured / sum-of-units correction (1: none)
    worst: list[dict[str, Any]] = field(default_factory=list)  # the 3 largest |errors|
    e2e: dict[str, Any] | None = None  # steps x UNet + decoder, with the partner table (error_stats and more)
    scatter: str | None = None  # predicted-vs-measured Plotly HTML
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What a table records of its validation (everything but the rows)."""
        return {k: v for k, v in self.to_dict().items() if k != "rows"}


def error_stats(predicted, measured) -> dict[str, float]:
    """Error distribution of predictions against measurements (percent of measured)."""
    from scipy.stats import spearmanr

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    err = (p - m) / m * 100
    a = np.abs(err)
    rho = float(spearmanr(p, m).statistic) if len(p) > 2 else float("nan")
    return {"median_abs_pct_error": float(np.median(a)), "mean_abs_pct_error": float(np.mean(a)),
            "p90_abs_pct_error": float(np.percentile(a, 90)), "max_abs_pct_error": float(np.max(a)),
            "bias_pct": float(np.mean(err)), "within_10_pct": float(np.mean(a <= 10) * 100),
            "within_5_pct": float(np.mean(a <= 5) * 100), "spearman": rho}


def write_scatter(rows: list[dict], path: str | Path, title: str) -> Path:
    """Predicted vs measured ms, one point per architecture, with the y = x and +-10% lines."""
    import plotly.graph_objects as go

    m = [r["measured_ms"] for r in rows]
    p = [r["predicted_ms"] for r in rows]
    hi = max(m + p) * 1.05
    fig = go.Figure()
    fig.add_scatter(x=m, y=p, mode="markers", name="architecture",
                    text=[f"#{r['index']}: {r['pct_error']:+.1f}%" for r in rows])
    for f, name, dash in ((1.0, "y = x", "solid"), (1.1, "+10%", "dot"), (0.9, "-10%", "dot")):
        fig.add_scatter(x=[0, hi], y=[0, hi * f], mode="lines", name=name, line=dict(dash=dash, width=1))
    fig.update_layout(title=title, xaxis_title="measured ms", yaxis_title="predicted ms (table)",
                      template="plotly_white")
    path = Path(path)
    fig.write_html(path, include_plotlyjs="cdn")
    return path


def validate(space, table_path: str | Path, backend: Backend, *, n: int = 20, seed: int = 1234,
             out: str | Path | None = None, policy: TimingPolicy | None = None, progress: bool = True,
             context_len: int | None = None, shard: tuple[int, int] = (0, 1), allow_mismatch: bool = False,
             record: bool = True, partner: str | Path | None = None, steps: int = 8,
             partner_preset: str | None = None, partner_space=None) -> ValidationReport:
    """Compare table predictions with end-to-end measurements on ``n`` random held-out
    architectures of ``space`` (``space.sample_random``, skipping the table's anchors), at the
    table's latent size. With ``out``, each measured architecture is appended there and skipped
    when re-run; ``shard=(k, n)`` measures only architectures ``i % n == k`` (several processes
    sharing ``out``; a last run without a shard reports all of them). A complete run at the table's
    own setting (``record``) appends its summary to the table and writes the scatter beside it
    (``TABLE.validation.html``).

    With ``partner`` (a table of the other network's space), the end-to-end latency
    ``steps x UNet + decoder`` is validated too: the partner is ``partner_preset`` (default: the
    study target's, ``tiny`` or ``snapgen-t2i``), predicted from its table and measured once."""
    from snapgen.progress import progress as progress_bar

    space = _load_space(space)
    lm = LatencyModel.from_table(table_path, space)
    mismatched = lm.table.mismatches(backend.describe())
    lm.table.check_backend(backend, allow_mismatch)
    L = lm.latent_size
    specs = [s for s in space.sample_random(n + len(lm.table.anchors), seed=seed)
             if spec_key(s, L) not in lm.table.anchors][:n]
    if len(specs) < n:
        raise UserError(f"the space yields only {len(specs)} distinct valid architectures besides the table's "
                        f"anchors, not {n}", key="--n")
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
            skey = spec_key(spec, L)
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
    bd = backend.describe()
    e2e = (_e2e(rows, lm, backend, partner, steps, partner_preset, partner_space, context_len, policy)
           if partner and rows else None)
    worst = sorted(rows, key=lambda r: -abs(r["pct_error"]))[:3]
    rep = ValidationReport(n=len(rows), **error_stats([r["predicted_ms"] for r in rows],
                                                      [r["measured_ms"] for r in rows]),
                           predict_ms_per_trial=float(np.median(t_pred) * 1e3), latent_size=L,
                           **{k: bd[k] for k in ("backend", "device", "mode", "threads", "dtype", "clock")},
                           anchor_scale=lm.table.anchor_scale,
                           worst=[{k: r[k] for k in ("index", "spec_key", "predicted_ms", "measured_ms", "pct_error")}
                                  for r in worst], e2e=e2e, rows=rows)
    if record and len(rows) == n and not mismatched:
        tp = Path(table_path)
        rep.scatter = str(write_scatter(rows, tp.with_suffix(".validation.html"),
                                        f"{tp.name}: {n} held-out architectures, latent {L}, {bd['threads']} "
                                        f"thread(s), {bd['clock']} clock"))
        with open(tp, "a") as f:
            f.write(json.dumps({"validation": {**rep.summary(), "seed": seed,
                                               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}) + "\n")
    return rep


def _e2e(rows, lm: LatencyModel, backend: Backend, partner, steps: int, preset: str | None, pspace, context_len,
         policy):
    """End-to-end errors: each validated network with the partner preset (predicted from its table,
    measured once): ``steps x UNet + decoder``."""
    from snapgen.presets import DEFAULT_DECODER_SPACE, DEFAULT_UNET_SPACE, load_decoder_preset, load_preset

    if steps < 1:
        raise UserError(f"must be >= 1, got {steps}", key="--steps")
    unet = lm.table.header["space"]["kind"] == "unet"
    want = "decoder" if unet else "unet"
    space = _load_space(pspace or (DEFAULT_DECODER_SPACE if unet else DEFAULT_UNET_SPACE))
    if space.kind != want:
        raise UserError(f"a {lm.table.header['space']['kind']} table's partner is a {want} space",
                        key="--partner-space")
    pm = LatencyModel.from_table(partner, space, {**backend.describe(), "latent_size": lm.latent_size})
    preset = preset or ("tiny" if unet else "snapgen-t2i")
    spec = (load_decoder_preset if unet else load_preset)(space.path, preset)
    p_pred = pm.predict(spec)
    p_meas = measure_latency(spec, backend, latent_size=lm.latent_size, context_len=context_len or lm.context_len,
                             policy=policy or VALIDATE_POLICY, breakdown=False).median_ms
    k_net, k_p = (steps, 1) if unet else (1, steps)
    pred = [k_net * r["predicted_ms"] + k_p * p_pred for r in rows]
    meas = [k_net * r["measured_ms"] + k_p * p_meas for r in rows]
    return {"steps": steps, "partner": str(partner), "partner_preset": preset, "partner_predicted_ms": p_pred,
            "partner_measured_ms": p_meas, **error_stats(pred, meas)}
