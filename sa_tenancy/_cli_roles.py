"""``sa-tenancy roles sync`` and the tenant-role options of ``create`` (private).

Kept out of :mod:`sa_tenancy.cli` so that each stays readable in one sitting; the command
module only registers what is defined here.
"""

from __future__ import annotations

import argparse
import sys
import time

from ._cli_support import checked_names
from ._cli_support import emit
from ._cli_support import engine_of
from ._cli_support import fail
from ._cli_support import namespace_of
from ._progress import ProgressLine
from ._role_sync import sync_tenant_roles
from ._roles import TenantRoles
from .exc import InvalidSchemaName
from .exc import TenancyError


def add_role_options(p: argparse.ArgumentParser) -> None:
    """``--role-prefix``, ``--grant-to`` and ``--shared-schema`` (see TenantRoles)."""
    p.add_argument(
        "--role-prefix",
        default="sa_",
        metavar="PREFIX",
        help="tenant role name prefix, one per database on a server (default: sa_)",
    )
    p.add_argument(
        "--grant-to",
        metavar="ROLE",
        help="the app's login role (default: the role this command connects as)",
    )
    p.add_argument("--shared-schema", action="append", default=[], metavar="SCHEMA",
                   help="a schema every tenant role may read (repeatable)")  # fmt: skip


def add_tenant_roles_flag(p: argparse.ArgumentParser, what: str) -> None:
    """``--tenant-roles`` and the role options, for create, rename and drop."""
    p.add_argument("--tenant-roles", action="store_true", help=f"also {what} each tenant's role")
    add_role_options(p)


def tenant_roles_of(args: argparse.Namespace) -> TenantRoles | bool:
    """What ``tenant_roles=`` the command line asks for (False without ``--tenant-roles``)."""
    return roles_of(args) if args.tenant_roles else False


def roles_of(args: argparse.Namespace) -> TenantRoles:
    """The TenantRoles the options describe, validated before anything is sent."""
    try:
        return TenantRoles(prefix=args.role_prefix, grant_to=args.grant_to,
                           shared_schemas=tuple(args.shared_schema))  # fmt: skip
    except (InvalidSchemaName, TenancyError) as error:
        fail(str(error))


def _cmd_sync(args: argparse.Namespace) -> int:
    settings = roles_of(args)
    tenants = checked_names(args.tenant) if args.tenant else None
    ns = namespace_of(args)
    engine = engine_of(args)
    stream = sys.stderr if args.json else sys.stdout
    line = ProgressLine(stream, tty=stream.isatty(), label="roles sync")
    failed: dict[str, str] = {}
    started = time.monotonic()

    def progress(tenant: str, done: int, total: int) -> None:
        line(done, total, len(failed), time.monotonic() - started)

    try:
        roles = sync_tenant_roles(engine, tenant_roles=settings, tenants=tenants, namespace=ns,
                                  progress=progress, failed=failed)  # fmt: skip
    finally:
        line.close()
    lines = [f"synced {t} as {r}" for t, r in roles.items()]
    lines += [f"FAILED {t}: {why}" for t, why in failed.items()]
    emit(args, {"synced": roles, "failed": failed}, lines)
    return 1 if failed else 0


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register ``roles sync``."""
    roles = sub.add_parser("roles", help="tenant PostgreSQL roles (tenant_roles=True)")
    actions = roles.add_subparsers(dest="roles_command", required=True, metavar="ACTION")
    p = actions.add_parser("sync", parents=[common],
                           help="give every tenant its role and repair the grants")  # fmt: skip
    p.add_argument("--tenant", nargs="+", metavar="NAME", help="only these tenants")
    add_role_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_sync)
