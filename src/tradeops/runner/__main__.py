"""``python -m tradeops.runner INCIDENT [options]``: the same as ``tradeops run``."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run one incident, like ``tradeops run``; returns its exit code (0 resolved, 1 failed, 2 halted but not
    recovered, 3 bad input)."""
    from tradeops.cli import main as cli_main

    return cli_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
