"""Roofline benchmark (same as ``videomap bench roofline``); run ``python benchmarks/roofline.py --help``."""

import sys

from videomap.apps.bench.roofline import main

if __name__ == "__main__":
    sys.exit(main())
