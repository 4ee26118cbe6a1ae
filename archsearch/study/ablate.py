"""``archsearch ablate``: a declarative ablation, the paper's Fig. 3 as a file.

``mode: cumulative`` walks an ordered ladder (each step builds on the previous one: a preset of the
space, and/or ``arch`` fields merged over the previous step); ``mode: one_at_a_time`` applies each
step alone to ``base``. Every step gets the same proxy budget and every seed; the cost, latency and
quality are measured exactly as ``archsearch run`` measures a trial (full-size cost and latency at
the target resolution, quality from the proxy-scaled model).

Results are appended to ``<output_dir>/results.jsonl`` as each (step, seed) finishes, so an
interrupted ablation resumes where it stopped; ``ablation.csv`` and ``ablation.html`` (table and
Plotly chart: quality mean ± std over seeds, params, GFLOPs, latency, deltas between steps) are
written at the end.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pandas as pd

from snapgen.cache import atomic_write_bytes, hash_config
from snapgen.presets import resolve_preset_dict


def step_archs(cfg, space) -> list[tuple[object, dict]]:
    """[(step cfg, merged arch mapping)] in ladder order (the base first for one_at_a_time)."""
    f = str(space.path)
    out = []
    if cfg.mode == "one_at_a_time":
        base = resolve_preset_dict(space.presets, cfg.base, file=f)
        from archsearch.study.schema import AblationStepCfg

        out.append((AblationStepCfg(name=cfg.base, preset=cfg.base, description="base"), base))
        for st in cfg.steps:
            arch = resolve_preset_dict(space.presets, st.preset, file=f) if st.preset else dict(base)
            out.append((st, {**arch, **st.arch, "name": st.name}))
        return out
    prev = resolve_preset_dict(space.presets, cfg.base, file=f) if cfg.base else None
    for st in cfg.steps:
        arch = resolve_preset_dict(space.presets, st.preset, file=f) if st.preset else dict(prev)
        arch = {**arch, **st.arch, "name": st.name}
        out.append((st, arch))
        prev = arch
    return out


def _read_results(path: Path) -> dict:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that (step, seed) runs again
            done[r["key"]] = r
    return done


def run_ablation(cfg, space, *, file: str, progress: bool = True) -> pd.DataFrame:
    from archsearch.objectives import METRICS
    from archsearch.objectives.cost import cost_metrics
    from archsearch.study.provenance import code_version, environment

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    import yaml
    from omegaconf import OmegaConf

    atomic_write_bytes(out / "ablation.yaml", yaml.safe_dump(
        OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True), sort_keys=False).encode())
    results_path = out / "results.jsonl"
    done = _read_results(results_path)
    steps = step_archs(cfg, space)
    specs = []
    for st, arch in steps:
        specs.append(space.build(arch, key=f"steps.{st.name}"))
    metric = METRICS[cfg.quality]
    quality_cfg = metric.config(cfg, file, sys.stderr.isatty()) if metric.config else None
    latency = None
    if cfg.latency.mode != "none":
        from archsearch.objectives.latency import LatencyObjective

        latency = LatencyObjective(cfg.latency, cfg.target, space)
    qcfg_hash = hash_config(dataclasses.asdict(quality_cfg) if quality_cfg else dataclasses.asdict(cfg.synthetic))[:12]
    total = len(steps) * len(cfg.seeds)
    k = 0
    t_all = time.time()
    with open(results_path, "a") as log:
        for (st, _), spec in zip(steps, specs):
            cost = cost_metrics(spec, cfg.target.latent_size, cfg.target.context_len)
            lat = latency.metrics(spec, space.kind, ["latency_ms"]) if latency else {}
            for seed in cfg.seeds:
                k += 1
                key = f"{st.name}|{seed}|{spec.key()}|{qcfg_hash}"
                if key in done:
                    continue
                t0 = time.time()
                res = metric.run(spec, quality_cfg, cfg, seed=seed, params=cost["params"])
                row = {"key": key, "step": st.name, "seed": seed, "quality": float(res.value),
                       "quality_metric": res.metric, "steps": int(res.steps), "seconds": time.time() - t0,
                       **cost, **lat, "spec": spec.to_dict(), "code_version": code_version()["describe"]}
                log.write(json.dumps(row) + "\n")
                log.flush()
                done[key] = row
                print(f"[{k}/{total}] {st.name} seed {seed}: {res.metric}={res.value:.4g}  "
                      f"params={cost['params'] / 1e6:.1f}M  gflops={cost['gflops']:.1f}  ({time.time() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
    df = summarise(cfg, steps, specs, done, qcfg_hash)
    df.to_csv(out / "ablation.csv", index=False)
    write_ablation_html(cfg, df, out / "ablation.html")
    (out / "environment.json").write_text(json.dumps({**environment(), "code_version": code_version(),
                                                      "seconds": time.time() - t_all}, indent=2))
    return df


def summarise(cfg, steps, specs, done: dict, qcfg_hash: str) -> pd.DataFrame:
    rows = []
    for (st, _), spec in zip(steps, specs):
        rs = [done[f"{st.name}|{s}|{spec.key()}|{qcfg_hash}"] for s in cfg.seeds]
        q = pd.Series([r["quality"] for r in rs])
        rows.append({"step": st.name, "description": st.description, "paper": getattr(st, "paper", ""),
                     "metric": rs[0]["quality_metric"], "quality_mean": q.mean(),
                     "quality_std": q.std(ddof=1) if len(q) > 1 else 0.0, "seeds": len(q),
                     "params_M": rs[0]["params"] / 1e6, "gflops": rs[0]["gflops"],
                     "latency_ms": rs[0].get("latency_ms")})
    df = pd.DataFrame(rows)
    # Deltas: against the previous step on a cumulative ladder, against the base for one-at-a-time.
    ref = df.shift(1) if cfg.mode == "cumulative" else df.iloc[[0] * len(df)].reset_index(drop=True)
    for c in ("quality_mean", "params_M", "gflops", "latency_ms"):
        if df[c].notna().any():
            df[f"d_{c}_%"] = (100 * (df[c] / ref[c] - 1)).round(1)
    if cfg.mode == "one_at_a_time":
        df.loc[0, [c for c in df.columns if c.startswith("d_")]] = float("nan")
    return df


def write_ablation_html(cfg, df: pd.DataFrame, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = [("quality_mean", f"{df['metric'].iloc[0]} (mean ± std, {int(df['seeds'].iloc[0])} seeds)"),
            ("params_M", "params (M)"), ("gflops", "GFLOPs"), ("latency_ms", "latency (ms)")]
    cols = [(c, t) for c, t in cols if df[c].notna().any()]
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=[t for _, t in cols])
    for i, (c, t) in enumerate(cols, 1):
        err = dict(type="data", array=df["quality_std"].tolist()) if c == "quality_mean" else None
        d = df.get(f"d_{c}_%")
        text = [("" if d is None or pd.isna(x) else f"{x:+.1f}%") for x in (d if d is not None else [None] * len(df))]
        fig.add_trace(go.Bar(x=df["step"], y=df[c], error_y=err, text=text, textposition="outside", name=t,
                             showlegend=False, hovertext=df["description"]), row=1, col=i)
    how = "each step vs the previous one" if cfg.mode == "cumulative" else "each variant vs the base"
    fig.update_layout(title=f"Ablation {cfg.name} ({cfg.mode}; bar labels: change, {how})", height=460,
                      template="plotly_white")
    table = df.dropna(axis=1, how="all").to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="")
    html = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ablation {cfg.name}</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:24px} table{border-collapse:collapse;font-size:13px}"
            " td,th{border:1px solid #ddd;padding:3px 8px}</style></head><body>"
            + fig.to_html(full_html=False, include_plotlyjs=True) + table + "</body></html>")
    atomic_write_bytes(path, html.encode())
    path.chmod(0o644)


def print_table(df: pd.DataFrame) -> None:
    show = [c for c in ["step", "metric", "quality_mean", "quality_std", "params_M", "gflops", "latency_ms",
                        "d_quality_mean_%", "d_params_M_%", "d_gflops_%", "d_latency_ms_%", "paper"]
            if c in df.columns and df[c].notna().any() and not (df[c] == "").all()]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 40):
        print(df[show].to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep=""))
