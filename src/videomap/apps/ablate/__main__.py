"""``python -m videomap.apps.ablate CONFIG.yaml ...``: the same as ``videomap ablate``."""

import sys

from videomap.apps.ablate import ablate_main

sys.exit(ablate_main())
