"""Video-LLM encoder benchmark (same as ``videomap bench encoder``); run ``python benchmarks/encoder.py --help``."""

import sys

from videomap.apps.bench.encoder import main

if __name__ == "__main__":
    sys.exit(main())
