"""The experiments' own tests: ``.venv/bin/python -m pytest experiments/tests`` from the repository root
(the project's test suite, ``tests/``, never imports ``experiments``)."""
