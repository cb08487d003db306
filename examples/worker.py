"""Worker example: a command that visits every tenant with ``for_each_tenant``.

Run it (from the repository root)::

    python examples/worker.py --help
    python examples/worker.py count                      # notes per tenant
    python examples/worker.py add "maintenance at 18:00"  # one note in every tenant
    python examples/worker.py --tenants acme,nope count  # nope fails; acme is still counted

It provisions ``TENANTS`` like the web examples, runs at most ``--jobs`` tenants at once, prints a
progress line on stderr and one result line per tenant on stdout, and exits with status 1 if
any tenant failed. Configuration (``DATABASE_URL``, ``TENANTS``, ``TENANCY_STRATEGY``): see
``examples/_notes.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples._notes import Note
from examples._notes import configure
from sa_tenancy.integrations.workers import for_each_tenant


def count(session: Session, schema: str) -> int:
    return session.scalar(select(func.count()).select_from(Note)) or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="worker.py", description="Run a job in every tenant, a few tenants at a time."
    )
    parser.add_argument(
        "--tenants",
        help="comma-separated tenants to visit (default: every tenant in the database)",
    )
    parser.add_argument("--jobs", type=int, default=4, help="tenants at once (default 4)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("count", help="print how many notes each tenant has")
    add = commands.add_parser("add", help="add a note to every tenant")
    add.add_argument("body")
    args = parser.parse_args(argv)

    demo = configure()
    demo.provision()

    def add_note(session: Session, schema: str) -> int:
        note = Note(body=args.body)
        session.add(note)
        session.flush()
        return note.id

    job = count if args.command == "count" else add_note
    tenants = args.tenants.split(",") if args.tenants else None
    run = for_each_tenant(demo.SessionLocal, job, tenants=tenants, jobs=args.jobs)
    for schema, result in run.results.items():
        print(f"{schema}: {result}")
    if not run.ok:
        print(run.report(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
