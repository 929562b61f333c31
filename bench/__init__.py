"""Benchmarks: `python -m bench NAME` measures ours, the baseline and the limit in one run.

Each module `bench/NAME.py` has `main(argv) -> int`, prints a table and writes
`bench/results/NAME.json` in the shared format (see `bench/report.py`).
"""
