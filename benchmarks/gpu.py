"""The GPU check (same as ``videomap bench gpu``); run ``python benchmarks/gpu.py --help``."""

import sys

from videomap.apps.bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
