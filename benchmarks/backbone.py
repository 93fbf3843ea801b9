"""Backbone benchmark (same as ``videomap bench backbone``); run ``python benchmarks/backbone.py --help``."""

import sys

from videomap.apps.bench.backbone import main

if __name__ == "__main__":
    sys.exit(main())
