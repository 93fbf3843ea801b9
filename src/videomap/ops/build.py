"""``python -m videomap.ops.build``: build (or find in the cache) the fused CPU scan kernel.

The Makefile runs this once at install time so that the first test or training step does not pay for the
compilation (~30 s). Exit status 1 when the kernel cannot be built; the library then uses the reference scan.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    from .scan_cpu import build

    start = time.perf_counter()
    try:
        module = build(verbose="-v" in sys.argv)
    except Exception as error:  # noqa: BLE001 - report any build failure plainly
        print(f"videomap: the CPU scan kernel could not be built: {error}", file=sys.stderr)
        return 1
    print(f"videomap: CPU scan kernel ready, {module.isa()} path ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
