"""optuna-dashboard shows a study as archsearch sees it: a real server on 127.0.0.1 over a finished
test study, read back through its HTTP API (feasibility from the constraints it reads, the proxy's
intermediate evaluations as learning curves)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from optuna.trial import TrialState

from archsearch.study.pareto import feasible, load_run, storage_url_for
from archsearch.study.storage import named_constraints

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is in the dev extra: pip install -e '.[dev]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def dashboard(tiny_run):
    """optuna-dashboard serving the tiny run's storage: its base URL (the server stops after the test)."""
    port = _free_port()
    run = load_run(tiny_run)
    url = storage_url_for(run.dir, run.cfg)
    code = f"import optuna_dashboard; optuna_dashboard.run_server({url!r}, host='127.0.0.1', port={port})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # at most ~60 s for the server to listen
            if proc.poll() is not None:
                pytest.fail(f"optuna-dashboard exited: {proc.stdout.read()[-2000:]}")
            try:
                _get(base + "/api/studies")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        else:
            pytest.fail("optuna-dashboard did not answer within 60 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_api_shows_feasibility_and_learning_curves(tiny_run, dashboard):
    run = load_run(tiny_run)
    ours = {t.number: t for t in run.study.get_trials(deepcopy=False)}
    studies = _get(dashboard + "/api/studies")["study_summaries"]
    sid = next(s["study_id"] for s in studies if s["study_name"] == run.cfg["name"])
    detail = _get(f"{dashboard}/api/studies/{sid}")
    api = {t["number"]: t for t in detail["trials"]}
    assert set(api) == set(ours)

    constrained = [n for n, t in ours.items() if named_constraints(t)]
    assert constrained, "the test study must record constraints"
    seen = {True: 0, False: 0}
    for n in constrained:
        cons = api[n]["constraints"]  # optuna-dashboard: feasible <=> every value <= 0
        assert cons == pytest.approx(list(named_constraints(ours[n]).values()))
        assert all(c <= 0 for c in cons) == feasible(ours[n])
        seen[feasible(ours[n])] += 1
    assert seen[True] and seen[False], f"need feasible and infeasible trials, got {seen}"

    assert detail["has_intermediate_values"]
    complete = [n for n, t in ours.items() if t.state == TrialState.COMPLETE]
    for n in complete:  # the proxy's evaluations (synthetic here), step by step
        curve = [(p["step"], p["value"]) for p in api[n]["intermediate_values"]]
        assert curve == [tuple(e) for e in ours[n].user_attrs["evals"]] and len(curve) >= 2
    # early-stopped trials keep their rungs in user attributes only (Optuna's TPE would misread them)
    stopped = [n for n, t in ours.items() if "early_stopped" in t.user_attrs]
    assert stopped and all(api[n]["intermediate_values"] == [] for n in stopped)
