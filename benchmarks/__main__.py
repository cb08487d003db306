"""Entry point: ``python -m benchmarks SUITE [options]``; ``python -m benchmarks --help``.

Each suite is a module ``benchmarks/<suite>.py`` with a ``main(argv: list[str]) -> int`` that
parses its own options (``--dburl``, ``--n``, ``--json`` ...). Suites run the baseline and the
candidates in the same run and report ratios: on a small, noisy machine only ratios mean much.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path


def suites() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = suites()
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m benchmarks SUITE [--dburl URL] [--n N] [--json FILE] ...")
        print("suites: " + (", ".join(names) if names else "(none yet)"))
        print("python -m benchmarks SUITE --help shows a suite's own options")
        return 0 if args else 2
    suite, rest = args[0], args[1:]
    if suite not in names:
        print(f"unknown suite {suite!r}; suites: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{suite}")
    status = int(module.main(rest))
    if suite != "stress" and rest[:1] not in (["-h"], ["--help"]):
        # The start's load average is in the suite's header; figures count only from a machine
        # that stayed idle (below 0.5) from start to end.
        print(f"# load average at the end (1 / 5 / 15 min): {_load()}")
    return status


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
