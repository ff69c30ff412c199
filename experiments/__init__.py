"""Diagnostics and comparisons on the embedded benchmark (not installed; run from the repository root as
``.venv/bin/python -m experiments.NAME``). Measurements, with their commands and dates: ``README.md`` here."""
