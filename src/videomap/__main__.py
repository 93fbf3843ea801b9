"""``python -m videomap`` is the ``videomap`` command."""

import sys

from .apps.cli import main

sys.exit(main())
