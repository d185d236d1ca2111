"""Benchmarking the engine: speed and memory of the model zoo, and the report they make.

The measurement code behind ``cascadeseg bench`` (whose module is the thin command line):
:mod:`.measure` (timing and memory of a call), :mod:`.sections` (2D / 3D throughput, MONAI peers,
engine overhead, end to end, the targets), :mod:`.memory_probe` (the 512x512x600 CT in a fresh
process) and :mod:`.report` (JSON and Markdown). Timed tests are not written with it: benchmarks
print tables, tests assert behaviour.
"""
