"""The ``sa-tenancy move`` and ``sa-tenancy placement`` commands (Citus only; private).

Kept apart from :mod:`sa_tenancy.cli`, which only registers them (:func:`add_commands`). Same
exit codes as every command: 0 done, 1 the database refused (not Citus, no such tenant, an
empty tenant, a move Citus rejected), 2 a usage error (a bad name or ``HOST:PORT``) or a
database that cannot be reached.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import citus
from ._cli_support import checked_names
from ._cli_support import emit
from ._cli_support import engine_of
from ._cli_support import fail
from ._cli_support import namespace_of


def _node(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) as ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        fail(f"node {value!r} is not HOST:PORT (e.g. worker-3:5432)")
    return host, int(port)


def _cmd_move(args: argparse.Namespace) -> int:
    name = checked_names([args.name])[0]
    host, port = _node(args.node)
    ns = namespace_of(args)
    engine = engine_of(args)
    citus.move_tenant(engine, name, host, port, transfer_mode=args.transfer_mode, namespace=ns)
    emit(args, {"moved": name, "node": [host, port]}, [f"moved {name} to {host}:{port}"])
    return 0


def _cmd_placement(args: argparse.Namespace) -> int:
    ns = namespace_of(args)
    engine = engine_of(args)
    placed = citus.tenant_placement(engine, namespace=ns)
    data: dict[str, Any] = {k: (None if v is None else list(v)) for k, v in placed.items()}
    lines = [
        f"{name}\t{'-' if node is None else f'{node[0]}:{node[1]}'}"
        for name, node in placed.items()
    ]
    emit(args, data, lines)
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``move`` and ``placement`` on the ``sa-tenancy`` subparsers."""
    p = sub.add_parser(
        "move",
        parents=[common],
        help="move a tenant to another Citus worker node",
        description=(
            "Move tenant NAME (a distributed schema) to the Citus worker HOST:PORT with "
            "citus_schema_move. Run against the coordinator. A tenant without tables has no "
            "shards and cannot move."
        ),
    )
    p.add_argument("name", metavar="NAME", help="the tenant to move")
    p.add_argument("node", metavar="HOST:PORT", help="the target worker, as Citus names it")
    p.add_argument(
        "--transfer-mode",
        choices=citus.TRANSFER_MODES,
        default="auto",
        help=(
            "auto/force_logical: logical replication, writes continue, every table needs a "
            "primary key; block_writes: blocks writes to the tenant, works for any table "
            "(default: auto)"
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_move)

    p = sub.add_parser(
        "placement",
        parents=[common],
        help="which Citus node holds each tenant",
        description=(
            "Print each tenant and the node (HOST:PORT) holding it; '-' (null in JSON) for a "
            "tenant with no shards (no tables yet). Citus only."
        ),
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_cmd_placement)
