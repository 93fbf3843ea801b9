"""Data benchmark (same as ``videomap bench data``); run ``python benchmarks/data.py --help``."""

import sys

from videomap.apps.bench.data import main

if __name__ == "__main__":
    sys.exit(main())
