"""The fidelity report: statistics of proxy against reference, as JSON, text, a Plotly scatter and a
dashboard section.

Every statistic comes from :mod:`archsearch.stats`:

* ``correlation``: Spearman rho / Kendall tau between the proxy value (mean over the proxy seeds) and
  the reference value (mean over the reference seeds), each with a bootstrap 95 % interval over
  architectures; ``single_seed``: each proxy seed alone against the mean of the *other* reference
  seeds (a proxy run shares its seed's initialisation with the reference run of that seed);
* ``fronts``: the Pareto front of the K architectures under the study's objectives with the proxy
  quality, and with the reference quality substituted (the other objectives are exact: params,
  GFLOPs, latency), both over the architectures feasible under the study's constraints; how many
  of the reference front the proxy front holds; and the reference front that respects the
  reference's own seed spread (:func:`archsearch.stats.noisy_front`, z = 1.96 on the standard error);
* ``noise``: per side with >= 2 seeds, the pooled seed standard deviation against the spread of the
  per-architecture means (SNR) and the smallest resolvable difference.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from archsearch.stats import front_recovery, noisy_front, rank_agreement, seed_noise, summarise_seeds


def clean(obj):
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _front(rows, feasible, directions, se=None) -> list[int]:
    idx = [i for i, ok in enumerate(feasible) if ok]
    if not idx:
        return []
    sub = np.array([rows[i] for i in idx], dtype=float)
    s = None if se is None else np.array([se[i] for i in idx], dtype=float)
    return [idx[j] for j in noisy_front(sub, directions, s)]


def _objective_rows(study, cands, quality: str, qvals):
    rows, feasible = [], []
    for c, q in zip(cands, qvals):
        m = {**c.metrics, quality: q}
        rows.append([m[n] for n in study.objective_names])
        feasible.append(all(con.violation(m[con.metric]) <= 0 for con in study.constraints))
    return rows, feasible


def build_report(*, study, source: dict, cands, quality: str, proxy_side, reference_side, proxy_values,
                 reference_values, seconds: dict, n_resamples: int = 2000, seed: int = 0) -> dict:
    """``proxy_values`` / ``reference_values``: per candidate, {seed: value} over that side's seeds."""
    from archsearch.objectives import METRICS

    directions = dict(zip(study.objective_names, study.directions))
    q_dir = directions.get(quality, METRICS[quality].direction)
    archs = []
    for c, pv, rv in zip(cands, proxy_values, reference_values):
        ps, rs = summarise_seeds(list(pv.values())), summarise_seeds(list(rv.values()))
        archs.append({"label": c.label, "trial": c.trial, "spec_hash": c.spec_hash, "run_front": c.run_front,
                      "proxy": {"values": {str(k): v for k, v in pv.items()}, **ps.to_dict()},
                      "reference": {"values": {str(k): v for k, v in rv.items()}, **rs.to_dict()},
                      "metrics": {k: v for k, v in c.metrics.items() if k != quality}, "spec": c.spec.to_dict()})
    x = [a["proxy"]["mean"] for a in archs]
    y = [a["reference"]["mean"] for a in archs]
    corr = rank_agreement(x, y, n_resamples=n_resamples, seed=seed)
    single = []
    for s in proxy_side.seeds:
        others = [r for r in reference_side.seeds if r != s]
        if not others:
            continue
        ys = [float(np.mean([rv[r] for r in others])) for rv in reference_values]
        xs = [pv[s] for pv in proxy_values]
        single.append({"proxy_seed": s, "reference_seeds": others,
                       **rank_agreement(xs, ys, n_resamples=n_resamples, seed=seed)})
    noise = {}
    for name, vals in (("proxy", proxy_values), ("reference", reference_values)):
        side = proxy_side if name == "proxy" else reference_side
        noise[name] = seed_noise([list(v.values()) for v in vals]) if len(side.seeds) >= 2 else None
    dirs = study.directions
    missing = next((f"{c.label}: {c.missing}" for c in cands if c.missing), None)
    if missing is None:
        rows_p, feas_p = _objective_rows(study, cands, quality, x)
        rows_r, feas_r = _objective_rows(study, cands, quality, y)
        front_p = _front(rows_p, feas_p, dirs)
        front_r = _front(rows_r, feas_r, dirs)
        qcol = study.objective_names.index(quality) if quality in study.objective_names else None
        se = [[(a["reference"]["sem"] if (j == qcol and a["reference"]["n"] > 1) else 0.0)
               for j in range(len(dirs))] for a in archs]
        front_rn = _front(rows_r, feas_r, dirs, se)
    else:
        front_p = front_r = front_rn = []
        feas_p = feas_r = [None] * len(archs)
    for i, a in enumerate(archs):
        a.update(proxy_front=i in front_p, reference_front=i in front_r, reference_front_noisy=i in front_rn,
                 feasible_proxy=feas_p[i], feasible_reference=feas_r[i])
    shared = sorted(set(proxy_side.seeds) & set(reference_side.seeds))
    corr["note"] = (f"proxy and reference share seeds {shared}: a seed's noise can be common to both sides, which "
                    "raises this correlation; single_seed compares each proxy seed with the other seeds' reference"
                    if shared else "proxy and reference seeds are disjoint")
    labels = [a["label"] for a in archs]
    rec = front_recovery([labels[i] for i in front_p], [labels[i] for i in front_r])
    rep = {
        "study": study.name, "source": source, "metric": quality, "direction": q_dir,
        "objectives": study.objective_names, "directions": dirs,
        "sides": {s.name: {"settings_key": s.key, "seeds": list(s.seeds), "settings": s.resolved,
                           "describe": s.describe()} for s in (proxy_side, reference_side)},
        "architectures": archs,
        "correlation": corr, "single_seed": single, "noise": noise,
        "fronts": ({"proxy": [labels[i] for i in front_p], "reference": [labels[i] for i in front_r],
                    "reference_noisy": [labels[i] for i in front_rn], "recovery": rec,
                    "note": "Pareto fronts of these K architectures (feasible ones) under the study's objectives; "
                            "reference_noisy keeps every architecture no other beats by more than 1.96 standard "
                            "errors of the reference seeds"}
                   if missing is None else {"skipped": f"no fronts: an objective is missing for {missing}"}),
        "seconds_per_evaluation": seconds,
    }
    return clean(rep)


# ---- text -------------------------------------------------------------------------------------------
def _ci(d) -> str:
    if d["low"] is None:
        return f"{d['value']:+.3f}" if d["value"] is not None else "-"
    return f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def print_report(rep: dict, file=None) -> None:
    src = rep["source"]
    n = len(rep["architectures"])
    what = (f"{n} architectures of run {src['run_dir']} ({src['selection']['front']} on its front)"
            if src["kind"] == "run" else f"{n} presets/specs")
    pr, rf = rep["sides"]["proxy"], rep["sides"]["reference"]
    print(f"fidelity of {rep['study']} ({rep['metric']}, {rep['direction']}): {what}", file=file)
    held = pr["seeds"][:src.get("run_seeds", 1)]  # a `seeds: N` run holds N of them
    own = f"  (seed(s) {held}: the run's own values)" if src["kind"] == "run" else ""
    print(f"  proxy:     {pr['describe']}{own}", file=file)
    print(f"  reference: {rf['describe']}", file=file)
    c = rep["correlation"]
    print(f"  Spearman rho {_ci(c['spearman'])}   Kendall tau {_ci(c['kendall'])}   (95% bootstrap over "
          "architectures)", file=file)
    for s in rep["single_seed"]:
        print(f"  proxy seed {s['proxy_seed']} vs reference seeds {s['reference_seeds']}: rho {_ci(s['spearman'])}  "
              f"tau {_ci(s['kendall'])}", file=file)
    if "skipped" in rep["fronts"]:
        print(f"  {rep['fronts']['skipped']}", file=file)
    else:
        r = rep["fronts"]["recovery"]
        print(f"  front recovery: {r['recovered']} of the {r['of']} reference-front members are on the proxy front "
              f"({r['proxy_front_size']} members)", file=file)
    for name in ("proxy", "reference"):
        nz = rep["noise"].get(name)
        if nz:
            print(f"  {name} seed noise {nz['noise']:.4g} vs spread {nz['spread']:.4g} across architectures: SNR "
                  f"{nz['snr']:.2f}; differences under {nz['resolvable_single_seed']:.4g} (one seed each) / "
                  f"{nz['resolvable_mean']:.4g} ({nz['seeds']}-seed means) are not resolved at ~95%", file=file)
    secs = rep["seconds_per_evaluation"]
    print("  seconds per evaluation: " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items() if v is not None),
          file=file)


# ---- figure -----------------------------------------------------------------------------------------
_CATEGORIES = [  # (name, test, colour)
    ("on both fronts", lambda a: a["proxy_front"] and a["reference_front"], "#2ca02c"),
    ("reference front only (missed)", lambda a: a["reference_front"] and not a["proxy_front"], "#d62728"),
    ("proxy front only", lambda a: a["proxy_front"] and not a["reference_front"], "#ff7f0e"),
    ("neither front", lambda a: not a["proxy_front"] and not a["reference_front"], "#7f7f7f"),
]


def fidelity_figure(rep: dict):
    """Proxy value vs reference value per architecture, seed standard deviations as error bars; colour =
    front membership among the K, a star = on the run's own Pareto front."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, test, colour in _CATEGORIES:
        pts = [a for a in rep["architectures"] if test(a)]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[a["proxy"]["mean"] for a in pts], y=[a["reference"]["mean"] for a in pts], mode="markers",
            name=name, marker=dict(color=colour, size=[15 if a["run_front"] else 10 for a in pts],
                                   symbol=["star" if a["run_front"] else "circle" for a in pts],
                                   line=dict(width=1, color="#333")),
            error_x=dict(type="data", array=[a["proxy"]["std"] for a in pts], visible=True, thickness=1),
            error_y=dict(type="data", array=[a["reference"]["std"] for a in pts], visible=True, thickness=1),
            text=[a["label"] for a in pts],
            hovertemplate="%{text}<br>proxy %{x:.4g}<br>reference %{y:.4g}<extra></extra>"))
    c = rep["correlation"]
    pr, rf = rep["sides"]["proxy"], rep["sides"]["reference"]
    fig.update_layout(
        title=(f"Proxy vs reference {rep['metric']} ({len(rep['architectures'])} architectures): Spearman "
               f"{_ci(c['spearman'])}, Kendall {_ci(c['kendall'])}"),
        xaxis_title=f"proxy {rep['metric']} ({pr['describe']})", yaxis_title=f"reference {rep['metric']} "
        f"({rf['describe']})", template="plotly_white", legend_title="Pareto front among these (star: run's front)")
    return fig


def fidelity_section(rep: dict, *, include_plotlyjs: bool | str = False) -> str:
    """An HTML fragment (heading, summary table, the scatter) for a run's dashboard; pass
    ``include_plotlyjs=True`` where the page does not embed plotly.js already."""
    c = rep["correlation"]
    rows = [("Spearman rho (95% CI)", _ci(c["spearman"])), ("Kendall tau (95% CI)", _ci(c["kendall"]))]
    rows += [(f"single seed {s['proxy_seed']} vs other seeds' reference: rho", _ci(s["spearman"]))
             for s in rep["single_seed"]]
    r = rep["fronts"].get("recovery")
    rows.append(("front recovery", f"{r['recovered']} / {r['of']}" if r else rep["fronts"]["skipped"]))
    for name in ("proxy", "reference"):
        nz = rep["noise"].get(name)
        if nz:
            rows.append((f"{name} seed noise / spread (SNR)", f"{nz['noise']:.4g} / {nz['spread']:.4g} "
                                                             f"({nz['snr']:.2f})"))
            rows.append((f"{name}: smallest resolvable difference (one seed)", f"{nz['resolvable_single_seed']:.4g}"))
    for k, v in rep["seconds_per_evaluation"].items():
        if v is not None:
            rows.append((f"seconds per {k} evaluation", f"{v:.1f}"))
    table = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in rows)
    fig = fidelity_figure(rep)
    fig.update_layout(height=520)
    return (f"<h2>Proxy fidelity: {html.escape(rep['sides']['proxy']['describe'])} against "
            f"{html.escape(rep['sides']['reference']['describe'])}</h2>"
            f"<table class='trials'>{table}</table>"
            + fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs, config={"displaylogo": False}))


def write_html(rep: dict, path: str | Path) -> Path:
    from snapgen.cache import atomic_write_bytes

    path = Path(path)
    body = fidelity_section(rep, include_plotlyjs=True)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fidelity: {html.escape(rep['study'])}</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:24px} table{border-collapse:collapse;font-size:13px}"
            " td{border:1px solid #ddd;padding:3px 8px}</style></head><body>" + body + "</body></html>")
    atomic_write_bytes(path, page.encode())
    path.chmod(0o644)
    return path


def dumps(rep: dict) -> str:
    return json.dumps(rep, indent=2, allow_nan=False)


def load_reports(run_dir: str | Path) -> list[dict]:
    """Every fidelity report of a run (``<run>/fidelity/*/report.json``), newest first: what a dashboard
    shows with :func:`fidelity_section`."""
    paths = sorted(Path(run_dir).glob("fidelity/*/report.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [json.loads(p.read_text()) for p in paths]
