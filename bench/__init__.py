"""Benchmarks run by ``make bench`` (``python -m bench``).

Each module here exposes ``run() -> dict`` returning JSON-serialisable
measurements; ``bench/__main__.py`` runs them all and writes
``bench/results.json``. Speed is measured here, never asserted in tests.
"""
