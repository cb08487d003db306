"""Entry point: ``python -m benchmarks --help``."""

from __future__ import annotations

import sys


def main() -> int:
    print("usage: python -m benchmarks SUITE --dburl URL (no suites yet)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
