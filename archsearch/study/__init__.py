"""Declarative multi-objective studies: schema, runner, early stopping, Pareto, dashboard, export, ablations."""
