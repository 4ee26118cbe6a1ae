"""`archsearch dashboard`: one self-contained HTML file that renders in a real (headless) browser
with no JavaScript errors."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from archsearch.cli import main

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
                  "--v=0", "--virtual-time-budget=20000", "--window-size=1400,2600",
                  "--enable-unsafe-swiftshader"]  # software WebGL for the 3-D plot
# Installed before any other script of the page: every uncaught exception, rejected promise and
# console.error lands in a <pre id="js-errors"> that --dump-dom shows. (Chromium's own console log
# has no levels: it mixes the page's errors with GPU/performance notices.)
ERROR_HOOK = """<script>(function(){var errs=[];function put(m){errs.push(String(m));
var el=document.getElementById('js-errors');if(!el){el=document.createElement('pre');el.id='js-errors';
(document.body||document.documentElement).appendChild(el);}el.textContent=errs.join('\\n');}
window.addEventListener('error',function(e){put('uncaught: '+e.message);});
window.addEventListener('unhandledrejection',function(e){put('rejection: '+e.reason);});
var ce=console.error;console.error=function(){put('console.error: '+Array.prototype.join.call(arguments,' '));
ce.apply(console,arguments);};})();</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_dashboard_is_self_contained(tiny_run, tmp_path):
    out = tmp_path / "d.html"
    assert main(["dashboard", str(tiny_run), "-o", str(out)]) == 0
    html = out.read_text()
    assert html.count("Plotly.newPlot") >= 6  # 3-D, three 2-D fronts, hypervolume, parallel coordinates...
    assert re.search(r"plotly\.js v\d", html), "plotly.js must be embedded"
    assert not re.search(r"<script[^>]+src=\"https?://", html), "no CDN scripts"
    assert "Hypervolume history" in html and "Parameter importances" in html
    from archsearch.study.pareto import load_run

    n = len(load_run(tiny_run).study.trials)
    assert html.count('<tr title="') == n and "stages:" in html  # one row per trial, spec on hover


def test_dashboard_renders_in_headless_chromium(tiny_run, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    page = tmp_path / "d.html"
    assert main(["dashboard", str(tiny_run), "-o", str(page)]) == 0
    html = page.read_text()
    n_plots = html.count("Plotly.newPlot")
    page.write_text(html.replace("<head>", "<head>" + ERROR_HOOK, 1))
    shot = tmp_path / "dashboard.png"
    r = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                        f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert 'id="js-errors"' not in r.stdout, re.search(r'<pre id="js-errors">(.*?)</pre>', r.stdout, re.S).group(1)
    uncaught = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln and "Uncaught" in ln]
    assert not uncaught, "\n".join(uncaught)
    rendered = r.stdout.count('class="main-svg"')
    assert rendered >= n_plots, f"{rendered} plot SVGs for {n_plots} figures"
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_pareto_points_are_never_near_white(tiny_run):
    """Optuna's Blues/Reds scales start almost white, so trial 0 looked like an infeasible (grey) point."""
    from archsearch.study.dashboard import _pareto_figures
    from archsearch.study.pareto import load_run

    figs = _pareto_figures(load_run(tiny_run))
    assert len(figs) == 4  # one 3-D and three 2-D projections
    firsts = {tr.marker.colorscale[0][1] for _, f in figs for tr in f.data if tr.marker.colorscale}
    assert len(firsts) == 2  # front (reds) and the other trials (blues) still told apart
    for colour in firsts:
        r, g, b = map(int, re.findall(r"\d+", colour))
        assert min(r, g, b) < 200, colour


def test_early_stopped_trials_are_shown_at_their_rung(tiny_run):
    """Successive halving PRUNES the trials it stops and Optuna's Pareto plots leave PRUNED trials out:
    every evaluated architecture must still be visible, the stopped ones apart, at their last rung."""
    from optuna.trial import TrialState

    from archsearch.study.dashboard import STOPPED, _learning_curves, _pareto_figures
    from archsearch.study.pareto import load_run, pareto_trials

    run = load_run(tiny_run)
    trials = run.study.get_trials(deepcopy=False)
    stopped = {t.number: t for t in trials if "early_stopped" in t.user_attrs}
    assert stopped and all(t.state == TrialState.PRUNED for t in stopped.values())
    for title, fig in _pareto_figures(run):
        extra = [tr for tr in fig.data if tr.name == STOPPED["name"]]
        assert len(extra) == 1, title
        assert sorted(extra[0].customdata) == sorted(stopped)
        if title.split(": ")[1].startswith("synthetic"):  # the quality objective on the x axis
            got = dict(zip(extra[0].customdata, extra[0].x))
            assert got == {n: t.user_attrs["early_stopped"]["value"] for n, t in stopped.items()}
        shown = {t.number for t in trials if t.state == TrialState.COMPLETE} | set(extra[0].customdata)
        evaluated = {t.number for t in trials if "spec" in t.user_attrs and "invalid" not in t.user_attrs}
        assert evaluated <= shown, title
    curves = _learning_curves(run)
    by_trial = {tr.customdata[0]: tr for tr in curves.data}
    front = {t.number for t in pareto_trials(run)}
    for n, t in stopped.items():  # dashed, ending with a cross at the step it stopped
        tr = by_trial[n]
        assert tr.name == "early-stopped" and tr.line.dash == "dash"
        assert tr.x[-1] == t.user_attrs["early_stopped"]["step"] and tr.marker.symbol[-1] == STOPPED["symbol"]
    assert {tr.name for tr in curves.data} == {"early-stopped", "completed", "Pareto front"}
    assert {n for n, tr in by_trial.items() if tr.name == "Pareto front"} == front
