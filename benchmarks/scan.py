"""Selective-scan benchmark (same as ``videomap bench scan``); run ``python benchmarks/scan.py --help``."""

import sys

from videomap.apps.bench.scan import main

if __name__ == "__main__":
    sys.exit(main())
