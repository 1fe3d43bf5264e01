"""Layer benchmarks: `python -m bench.run` (full, with budgets) and `python -m bench.run --smoke` (CI)."""
