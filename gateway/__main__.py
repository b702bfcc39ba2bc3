"""`python -m gateway` is the `onnxgate` command."""

import sys

from gateway.cli import main

sys.exit(main())
