"""Benchmarks: run with ``python -m bench.<name>`` or all of them with ``bench/run``."""
