"""``archsearch fidelity``: how well the proxy's ranking predicts a longer, better-measured training.

K architectures (a run's Pareto front plus a sample of its other trials stratified by proxy quality,
or named presets / spec files) are re-evaluated at a higher fidelity — x M proxy steps, S seeds,
optionally more samples or a larger resolution — through the study's own quality code, and the
proxy values are compared with that reference: Spearman rho and Kendall tau with bootstrap
intervals, how much of the reference Pareto front the proxy front recovers, and the seed noise
against the spread between architectures (which differences the proxy can resolve at all).

Modules, one job each:

* :mod:`.evaluate`  the one adapter (study, spec, seed, quality settings) -> value, and the two sides'
                    settings (the proxy's, the reference's);
* :mod:`.store`     the evaluations log (one JSON line per finished evaluation, appended under a lock);
* :mod:`.select`    which architectures: from a run, or presets / spec files;
* :mod:`.measure`   the plan, the worker processes, resumption;
* :mod:`.report`    the statistics (from :mod:`archsearch.stats`), the JSON report, the Plotly scatter
                    and the dashboard section.

Files, beside the run (``RUN_DIR`` or the study's ``output_dir``)::

    fidelity/evaluations.jsonl    every finished evaluation of this run, keyed by (spec, seed, settings)
    fidelity/<hash>/settings.json  what this experiment is (sides, seeds, architectures)
    fidelity/<hash>/report.json    the report (also printed by --json)
    fidelity/<hash>/fidelity.html  the scatter, self-contained (plotly.js embedded)
"""
