"""Benchmarks (run as modules, e.g. ``python -m bench.sql_ingest``); results go to bench/results/."""
