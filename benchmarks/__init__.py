"""vlbridge's maintained benchmarks: the measurements behind its product claims (README.md lists them).

Run each from the repository root with vlbridge installed, as `python -m benchmarks.NAME` (`--quick` for a run of a
few seconds on tiny sizes). Modules whose names start with an underscore are the suite's shared code, not
benchmarks; every other module here is one, and CI runs it with `--quick` (tests/test_benchmarks.py).
"""
