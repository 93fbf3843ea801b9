"""Script vs command speed (same as ``videomap bench entry``); run ``python benchmarks/entry.py --help``."""

import sys

from videomap.apps.bench.entry import main

if __name__ == "__main__":
    sys.exit(main())
