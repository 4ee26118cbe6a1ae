"""notebooks/analysis.ipynb runs top to bottom (nbclient) on a finished study and picks a trial."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_analysis_notebook_executes(tiny_run, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("ARCHSEARCH_RUN_DIR", str(tiny_run))
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "picked trial" in text and "hypervolume" in text
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)
