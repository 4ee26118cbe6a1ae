"""Which architectures a fidelity measurement re-evaluates.

From a run: its Pareto front (Optuna's ``best_trials``, repeats removed) plus, up to K, a sample of
its other completed trials stratified by proxy quality — the trials sorted by quality and cut into
equal strata, one drawn from each with ``numpy.random.default_rng(select_seed)`` — so the sample
covers the whole quality range and is the same on every call with the same seed. A front larger
than K is itself sampled that way. Early-stopped trials have no final value and are not candidates.

From presets: named presets of the study's space, or spec files (YAML/JSON), in the order given.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snapgen.errors import UserError

CLI = "<command line>"


@dataclass
class Candidate:
    label: str
    spec: Any  # ArchSpec | DecoderSpec (full size)
    spec_hash: str
    metrics: dict = field(default_factory=dict)  # exact metrics (cost, latency) and, from a run, its proxy value
    trial: int | None = None
    run_front: bool = False
    run_value: float | None = None  # the run's own proxy value (its study seed), if any
    run_seconds: float | None = None  # what that value cost the run (its quality_s)
    run_values: dict = field(default_factory=dict)  # {seed: value} the run holds (its `seeds: N`), if any
    missing: str | None = None  # why an exact metric could not be computed (presets only)


def stratified(values, m: int, rng: np.random.Generator) -> list[int]:
    """Indices of ``m`` of ``values``: sorted, cut into ``m`` equal strata, one drawn from each."""
    order = np.argsort(np.asarray(values, dtype=float), kind="stable")
    return sorted(int(rng.choice(s)) for s in np.array_split(order, m) if len(s))


def from_run(run, study, quality: str, k: int, select_seed: int = 0) -> tuple[list[Candidate], dict]:
    """(candidates, note): the front plus a stratified sample of the rest, K in all when the run has
    that many distinct evaluated architectures."""
    from archsearch.study.pareto import completed, pareto_trials

    front_numbers = {t.number for t in pareto_trials(run)}
    seen: dict[str, Candidate] = {}
    for t in sorted(completed(run), key=lambda t: t.number):
        if "duplicate_of" in t.user_attrs or "spec" not in t.user_attrs:
            continue
        metrics = dict(t.user_attrs.get("metrics") or {})
        metrics.update(dict(zip(run.names, t.values)))
        if quality not in metrics:
            continue
        spec = study.space.build(t.user_attrs["spec"], key=f"trials[{t.number}].spec")
        h = spec.key()
        if h in seen:  # the same architecture twice: one point
            seen[h].run_front |= t.number in front_numbers
            continue
        qs = t.user_attrs.get("quality_seeds")  # archsearch.study.seeds: the objective is their mean
        seen[h] = Candidate(label=f"trial {t.number}", spec=spec, spec_hash=h, metrics=metrics, trial=t.number,
                            run_front=t.number in front_numbers, run_value=float(metrics[quality]),
                            run_seconds=(t.user_attrs.get("timings") or {}).get("quality_s"),
                            run_values=(dict(zip(qs["seeds"], qs["values"])) if qs else
                                        {int(study.cfg.seed): float(metrics[quality])}))
    cands = list(seen.values())
    if len(cands) < 2:
        raise UserError(f"the run has {len(cands)} completed architecture(s) with a {quality} value; at least 2 are "
                        "needed", file=str(run.dir))
    rng = np.random.default_rng(select_seed)
    front = [c for c in cands if c.run_front]
    rest = [c for c in cands if not c.run_front]
    if len(front) >= k:
        chosen = [front[i] for i in stratified([c.run_value for c in front], k, rng)]
    else:
        m = min(k - len(front), len(rest))
        chosen = front + ([rest[i] for i in stratified([c.run_value for c in rest], m, rng)] if m else [])
    chosen.sort(key=lambda c: c.trial)
    note = {"completed_architectures": len(cands), "front": len(front), "k_requested": k, "k": len(chosen),
            "select_seed": select_seed}
    if len(chosen) < k:
        note["k_note"] = f"the run has only {len(cands)} distinct completed architectures"
    return chosen, note


def from_presets(study, items: list[str]) -> list[Candidate]:
    """Presets of the study's space or spec files; one line naming the bad item otherwise."""
    from snapgen.decoder import DecoderSpec


    space = study.space
    out, labels = [], set()
    for item in items:
        path = Path(item)
        if path.is_file():
            from archsearch.commands.cost import load_spec

            spec = load_spec(str(path), None)
            label = path.stem
        elif item in space.presets:
            spec = space.preset(item)
            label = item
        else:
            raise UserError(f"unknown preset {item!r} (and no such spec file); allowed: {', '.join(space.presets)}",
                            file=CLI, key="--presets")
        if space.kind == "decoder" and not isinstance(spec, DecoderSpec):
            raise UserError(f"{item!r} is not a tiny-decoder spec (sd3/sdxl are baselines the proxy cannot train)",
                            file=CLI, key="--presets")
        if label in labels:
            raise UserError(f"{item!r} is listed twice", file=CLI, key="--presets")
        labels.add(label)
        out.append(Candidate(label=label, spec=spec, spec_hash=spec.key()))
    if len(out) < 2:
        raise UserError(f"at least 2 architectures are needed for a rank correlation, got {len(out)}", file=CLI,
                        key="--presets")
    return out
