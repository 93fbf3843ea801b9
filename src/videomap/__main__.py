"""``python -m videomap`` is the ``videomap`` command."""

import sys

from .cli import main

sys.exit(main())
