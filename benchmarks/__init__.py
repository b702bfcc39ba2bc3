"""onnxgate's benchmark harness: load generator, side-by-side scenarios, report, hot-path micro-benchmarks.

Run it with ``onnxgate bench`` (or ``python -m benchmarks``); see benchmarks/README.md.
"""
