"""``archsearch dashboard``: one self-contained HTML file over a run (plotly.js embedded, no CDN).

Figures come from ``optuna.visualization`` where it has them (Pareto front 2-D/3-D with infeasible
trials greyed from ``trial.constraints``, parallel coordinates, parameter importances per objective);
the hypervolume history is ours, so that it matches ``archsearch pareto`` (scaled by the reference
point, see :mod:`archsearch.study.pareto`). Early-stopped trials (PRUNED by successive halving,
which Optuna's figures leave out) are added to every Pareto plot as crosses at the quality of the
rung where they stopped, and every trial's proxy evaluations are drawn as learning curves (front,
completed and early-stopped told apart). The trial table is plain HTML whose rows show each trial's
spec on hover.
"""
from __future__ import annotations

import html
import itertools
import json
import warnings
from pathlib import Path

import optuna
import plotly.colors
import plotly.graph_objects as go
import yaml
from optuna.trial import TrialState

from archsearch.study.pareto import Run, feasible, fmt_metric, hypervolume_history, pareto_report, pareto_trials

V = optuna.visualization


def _visible_colours(fig: go.Figure) -> go.Figure:
    """Optuna colours trials by number on the full Blues (others) / Reds (Pareto) scales, whose low end
    is almost white: the lowest-numbered trials (often on the front) looked like the light grey of
    infeasible trials. Start both scales at a visible shade."""
    seq = plotly.colors.sequential
    for tr in fig.data:
        scale = tr.marker.colorscale
        if scale:
            colours = seq.Reds if scale[0][1] == seq.Reds[0] else seq.Blues
            tr.marker.colorscale = plotly.colors.make_colorscale(colours[3:])
    return fig


STOPPED = dict(name="early-stopped (quality at its last rung)", color="#e6850e", symbol="x")


def early_stopped(run: Run) -> list[tuple[object, int, list[float]]]:
    """(trial, the step it stopped at, its objective values there) of every early-stopped trial: the
    quality objective is its value at that rung (the runner records it in ``metrics``), the cost
    objectives are exact."""
    out = []
    for t in run.study.get_trials(deepcopy=False):
        stop = t.user_attrs.get("early_stopped")
        m = t.user_attrs.get("metrics", {})
        if t.state == TrialState.PRUNED and stop and all(n in m for n in run.names):
            out.append((t, int(stop["step"]), [float(m[n]) for n in run.names]))
    return out


def _add_stopped(fig: go.Figure, stopped, axes: tuple[int, ...], names: list[str]) -> None:
    if not stopped:
        return
    cols = [[v[i] for _, _, v in stopped] for i in axes]
    text = [f"trial {t.number}: early-stopped at step {step}" + ("" if feasible(t) else " (infeasible)")
            for t, step, _ in stopped]
    hover = "%{text}<br>" + "<br>".join(f"{names[i]} %{{{'xyz'[k]}}}" for k, i in enumerate(axes)) + "<extra></extra>"
    common = dict(mode="markers", name=STOPPED["name"], text=text, hovertemplate=hover,
                  customdata=[t.number for t, _, _ in stopped])
    if len(axes) == 3:  # WebGL draws its few symbols from font glyphs; a diamond renders everywhere
        fig.add_trace(go.Scatter3d(x=cols[0], y=cols[1], z=cols[2], **common,
                                   marker=dict(symbol="diamond", color=STOPPED["color"], size=5)))
    else:
        fig.add_trace(go.Scatter(x=cols[0], y=cols[1], **common,
                                 marker=dict(symbol=STOPPED["symbol"], color=STOPPED["color"], size=9)))
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.12, x=0))  # clear of the colour bars


def _pareto_figures(run: Run) -> list[tuple[str, go.Figure]]:
    names = run.names
    out = []
    if len(names) < 2:
        return out
    stopped = early_stopped(run)
    if len(names) >= 3:
        for combo in [tuple(range(3))]:
            fig = V.plot_pareto_front(run.study, targets=lambda t, c=combo: [t.values[i] for i in c],
                                      target_names=[names[i] for i in combo])
            _visible_colours(fig)
            _add_stopped(fig, stopped, combo, names)
            out.append((f"Pareto front (3-D): {', '.join(names[i] for i in combo)}", fig))
    for a, b in list(itertools.combinations(range(len(names)), 2))[:3]:
        fig = V.plot_pareto_front(run.study, targets=lambda t, a=a, b=b: [t.values[a], t.values[b]],
                                  target_names=[names[a], names[b]])
        _visible_colours(fig)
        _add_stopped(fig, stopped, (a, b), names)
        out.append((f"Pareto front (2-D): {names[a]} vs {names[b]}", fig))
    return out


def _learning_curves(run: Run) -> go.Figure | str:
    """Every trial's proxy evaluations (step, quality): the front, the other completed trials and the
    early-stopped ones (dashed, a cross at the rung where they stopped)."""
    front = {t.number for t in pareto_trials(run)}
    fig = go.Figure()
    shown = set()
    for t in run.study.get_trials(deepcopy=False):
        evals = t.user_attrs.get("evals") or []
        if not evals or "duplicate_of" in t.user_attrs:
            continue
        if t.number in front:
            kind, colour, dash = "Pareto front", "#c0392b", "solid"
        elif t.state == TrialState.COMPLETE:
            kind, colour, dash = "completed", "#4a7fb5", "solid"
        elif "early_stopped" in t.user_attrs:
            kind, colour, dash = "early-stopped", STOPPED["color"], "dash"
        else:
            continue
        symbols = ["circle"] * len(evals)
        if kind == "early-stopped":
            symbols[-1] = STOPPED["symbol"]
        fig.add_trace(go.Scatter(
            x=[e[0] for e in evals], y=[e[1] for e in evals], mode="lines+markers", name=kind,
            legendgroup=kind, showlegend=kind not in shown, line=dict(color=colour, dash=dash),
            marker=dict(symbol=symbols, size=[6] * (len(evals) - 1) + [10]), customdata=[t.number] * len(evals),
            hovertemplate=f"trial {t.number} ({kind})<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"))
        shown.add(kind)
    if not fig.data:
        return "not available: no trial has proxy evaluations (a study without a trained quality objective)"
    metric = next((t.user_attrs["proxy_metric"] for t in run.study.get_trials(deepcopy=False)
                   if "proxy_metric" in t.user_attrs), "quality")
    fig.update_layout(title="Learning curves: the proxy's evaluations of each trial", xaxis_title="proxy step",
                      yaxis_title=metric, template="plotly_white")
    return fig


def _hypervolume_figure(run: Run, ref) -> go.Figure:
    hist = hypervolume_history(run, ref)
    fig = go.Figure(go.Scatter(x=[h[0] for h in hist], y=[h[1] for h in hist], mode="lines+markers",
                               customdata=[h[2] for h in hist],
                               hovertemplate="trial %{x}<br>hypervolume %{y:.4f}<br>%{customdata:.0f} s<extra></extra>"))
    fig.update_layout(title="Hypervolume history (fraction of the box up to the reference point)",
                      xaxis_title="trial (in completion order)", yaxis_title="hypervolume", template="plotly_white")
    return fig


def _figure_or_note(title: str, make) -> tuple[str, go.Figure | str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return title, make()
    except Exception as e:  # too few trials, a constant parameter...: say so instead of failing
        return title, f"not available: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _trial_table(run: Run) -> str:
    names = run.names
    pareto = {t.number for t in pareto_trials(run)}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["trial", "state", *names, "feasible", "Pareto", "seconds", "note"])
    rows = []
    for t in run.study.get_trials(deepcopy=False):
        spec = t.user_attrs.get("spec")
        tip = yaml.safe_dump(spec, sort_keys=False) if spec else json.dumps(t.params, indent=1)
        vals = t.values or [None] * len(names)
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        note = t.user_attrs.get("pruned_reason") or t.user_attrs.get("fail_reason") or (
            f"same architecture as trial {t.user_attrs['duplicate_of']}" if "duplicate_of" in t.user_attrs else "")
        cells = [str(t.number), t.state.name, *[fmt_metric(n, v) for n, v in zip(names, vals)],
                 "yes" if feasible(t) else "no", "*" if t.number in pareto else "",
                 f"{secs:.0f}" if secs is not None else "", note]
        rows.append(f'<tr title="{html.escape(tip)}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f'<table class="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px} .note{color:#777}
table.trials{border-collapse:collapse;font-size:13px} table.trials td,table.trials th{border:1px solid #ddd;padding:3px 8px}
table.trials tr:hover{background:#eef4ff} .grid{display:flex;flex-wrap:wrap;gap:12px} .grid>div{flex:1 1 600px}
"""


def render(run: Run) -> str:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no feasible trials yet" is shown on the page instead
    rep = pareto_report(run)
    ref = [rep["reference_point"][n] for n in run.names]
    figs: list[tuple[str, go.Figure | str]] = []
    figs += _pareto_figures(run)
    figs.append(("Hypervolume history", _hypervolume_figure(run, ref)))
    figs.append(("Learning curves (proxy evaluations; early-stopped trials dashed)", _learning_curves(run)))
    for i, n in enumerate(run.names):
        figs.append(_figure_or_note(f"Parallel coordinates: {n}", lambda i=i, n=n: V.plot_parallel_coordinate(
            run.study, target=lambda t: t.values[i], target_name=n)))
    figs.append(_figure_or_note("Parameter importances per objective (fANOVA, optuna.importance)",
                                lambda: V.plot_param_importances(run.study)))
    parts, first = [], True
    for title, fig in figs:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(fig, str):
            parts.append(f'<p class="note">{html.escape(fig)}</p>')
            continue
        fig.update_layout(height=520)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first, config={"displaylogo": False}))
        first = False
    from archsearch.fidelity.report import fidelity_section, load_reports

    for fid_rep in load_reports(run.dir):  # `archsearch fidelity` and the study's fidelity: section
        parts.append(fidelity_section(fid_rep, include_plotlyjs=first))
        first = False
    if first:  # no figure at all: still embed plotly.js once, so the page is the same kind of file
        parts.append(go.Figure().to_html(full_html=False, include_plotlyjs=True))
    counts = ", ".join(f"{k.lower()} {v}" for k, v in rep["trials"].items())
    refs = ", ".join(f"{n} = {fmt_metric(n, v)}" for n, v in rep["reference_point"].items())
    header = (f"<h1>Study {html.escape(rep['study'])}</h1>"
              f"<p>{html.escape(counts)}; Pareto front: {len(rep['pareto'])} trial(s); hypervolume "
              f"<b>{rep['hypervolume']:.4f}</b> against the reference point {html.escape(refs)} "
              f"({html.escape(rep['reference_point_note'])}).</p>"
              f"<p class='note'>Objectives: {html.escape(', '.join(f'{n} ({d})' for n, d in zip(run.names, run.directions)))}."
              f" Grey points in Pareto plots are infeasible (a constraint is violated); orange crosses (diamonds in 3-D)"
              f" are early-stopped trials at the quality of the rung where they stopped.</p>")
    table = "<h2>Trials (hover a row for its spec)</h2>" + _trial_table(run)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>archsearch: {html.escape(rep['study'])}</title>"
            f"<style>{STYLE}</style></head><body>{header}{''.join(parts)}{table}</body></html>")


def write_dashboard(run: Run, path: str | Path) -> Path:
    from snapgen.cache import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, render(run).encode())
    path.chmod(0o644)  # a page to share, not a secret (the atomic temp file was private)
    return path
