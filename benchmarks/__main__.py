"""``python -m benchmarks ARGS``: the same as ``onnxgate bench ARGS``."""

from __future__ import annotations

import sys

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
