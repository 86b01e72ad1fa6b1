"""Benchmarks of sprites-async against the official SDK and the raw transport.

Run ``python -m benchmarks`` (or ``nox -s bench``); ``--quick`` for a smoke run.
"""
