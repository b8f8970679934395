"""The CI gate: memory budgets and baselines (check), JUnit output, in-place YAML edits, and
the pytest plugin."""
