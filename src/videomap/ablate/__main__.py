"""``python -m videomap.ablate CONFIG.yaml ...``: the same as ``videomap ablate``."""

import sys

from . import ablate_main

sys.exit(ablate_main())
