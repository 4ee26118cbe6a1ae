"""Both command lines: --version, `python -m`, overrides blamed on the command line, progress as
one line per event when the output is not a terminal."""
from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT, **kw):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=600, **kw)


def _error_line(r) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_version_from_package_metadata():
    import archsearch
    import snapgen

    v = version("snapgen-archsearch")
    assert snapgen.__version__ == archsearch.__version__ == v
    for prog in ("snapgen", "archsearch"):
        r = _run(prog, "--version")
        assert r.returncode == 0 and r.stdout.strip() == f"{prog} {v}", r.stderr


@pytest.mark.parametrize("prog", ["snapgen", "archsearch"])
def test_python_dash_m(prog):
    r = _run(prog, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: {prog}") and "--version" in r.stdout
    r = _run(prog)
    assert r.returncode == 2 and "error: the following arguments are required: COMMAND" in r.stderr


def test_override_errors_name_the_command_line(tiny_study, tmp_path):
    p = tiny_study(n_trials=3)
    cases = {"n_trials=0": "n_trials: must be >= 1, got 0",
             "sampler.name=annealing": "sampler.name: unknown sampler 'annealing'",
             "n_trials=many": "n_trials"}
    for override, needle in cases.items():
        line = _error_line(_run("archsearch", "run", p, override, cwd=tmp_path))
        assert line.startswith("error: <command line>: ") and needle in line, line
    # the same mistake in the file is the file's
    p.write_text(p.read_text().replace("n_trials: 3", "n_trials: 0"))
    assert _error_line(_run("archsearch", "run", p, cwd=tmp_path)) == f"error: {p}: n_trials: must be >= 1, got 0"
    assert not (tmp_path / "run").exists()  # nothing written
    line = _error_line(_run("archsearch", "ablate", "studies/ablation_unet.yaml", "seeds=[]"))
    assert line.startswith("error: <command line>: seeds: "), line


def test_progress_is_line_per_event_off_a_terminal():
    from tqdm import tqdm

    from snapgen.progress import LineProgress, progress

    buf = io.StringIO()
    bar = progress(total=100, desc="proxy a", file=buf, line_interval=0.0)
    assert isinstance(bar, LineProgress)
    for _ in range(4):
        bar.update(25)
        bar.set_postfix(loss="0.5000", refresh=False)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue() and len(lines) == 5
    assert lines[0].startswith("proxy a: 0/100") and lines[-1].startswith("proxy a: 100/100")
    assert lines[-1].endswith("loss=0.5000]")
    buf = io.StringIO()
    for _ in progress(range(1000), desc="quick", file=buf):  # default interval: a start and an end line
        pass
    assert buf.getvalue().splitlines()[0].startswith("quick: 0/1000") and len(buf.getvalue().splitlines()) == 2
    main, child = pty.openpty()
    with os.fdopen(child, "w") as tty:
        bar = progress(total=3, file=tty)
        assert isinstance(bar, tqdm)
        bar.close()
    os.close(main)


def test_study_log_to_a_file_has_no_carriage_returns(tiny_study, tmp_path):
    p = tiny_study(n_trials=4)
    with open(tmp_path / "log.txt", "w") as log:
        r = subprocess.run([sys.executable, "-m", "archsearch", "run", str(p)], stdout=log, stderr=subprocess.STDOUT,
                           cwd=tmp_path, timeout=600)
    text = (tmp_path / "log.txt").read_text()
    assert r.returncode == 0, text[-2000:]
    assert "\r" not in text
    bar = [ln for ln in text.splitlines() if ln.startswith("study tiny: ") and "/4 [" in ln]
    assert bar[0].startswith("study tiny: 0/4") and bar[-1].startswith("study tiny: 4/4")  # as plain lines
