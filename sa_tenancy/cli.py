"""The ``sa-tenancy`` command: tenant lifecycle and fleet migrations from a shell or a deploy.

Exit codes are for scripts: 0 when everything asked for was done, 1 when some tenants failed
(each one is named), 2 for a usage error, an invalid name or a database that cannot be reached.
No traceback is shown for any of those; ``--json`` prints one JSON document on stdout.

The database comes from ``--url`` or ``DATABASE_URL``, the namespace from ``--namespace`` or
``SA_TENANCY_NAMESPACE`` (unset: the default namespace); both options may come before or after
the command, like git's global options. Also runnable as ``python -m sa_tenancy.cli``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import exc as sa_exc

from . import _cli_citus
from . import _cli_roles
from . import _namespace
from . import _templates
from . import lifecycle
from . import reservoir
from ._cli_support import NAMESPACE_ENV
from ._cli_support import UsageError
from ._cli_support import checked_names
from ._cli_support import config_of
from ._cli_support import emit
from ._cli_support import engine_of
from ._cli_support import fail
from ._cli_support import load_metadata
from ._cli_support import message_of
from ._cli_support import namespace_of
from ._cli_support import url_of
from .exc import InvalidSchemaName
from .exc import TenancyError

PROG = "sa-tenancy"


def _cmd_create(args: argparse.Namespace) -> int:
    names = checked_names(args.names)
    template = checked_names([args.clone_from])[0] if args.clone_from else None
    metadata = load_metadata(args.metadata) if args.metadata else None
    config = None if template or args.claim else config_of(args, required=False)
    ns = namespace_of(args)
    roles = _cli_roles.tenant_roles_of(args)
    engine = engine_of(args)
    failed: dict[str, str] = {}
    made = []
    for name in names:
        try:
            if args.claim:
                reservoir.claim_tenant(engine, name, namespace=ns, tenant_roles=roles)
            elif template is not None:
                lifecycle.clone_tenant(engine, template, name, data=args.data, namespace=ns,
                                       tenant_roles=roles)  # fmt: skip
            else:
                lifecycle.create_tenant(engine, name, metadata=metadata, alembic_config=config,
                                        namespace=ns, tenant_roles=roles)  # fmt: skip
            made.append(name)
        except (TenancyError, sa_exc.DBAPIError) as error:
            failed[name] = message_of(error)
    lines = [f"created {n}" for n in made] + [f"FAILED {n}: {m}" for n, m in failed.items()]
    emit(args, {"created": made, "failed": failed}, lines)
    return 1 if failed else 0


def _cmd_drop(args: argparse.Namespace) -> int:
    names = checked_names(args.names)
    ns = namespace_of(args)
    roles = _cli_roles.tenant_roles_of(args)
    if not args.yes:
        if not sys.stdin.isatty():
            fail("dropping tenants deletes their data: pass --yes to confirm")
        listed = ", ".join(names)
        answer = input(f"drop {len(names)} tenant(s) ({listed}) and all their data? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing dropped")
            return 0
    engine = engine_of(args)
    failed: dict[str, str] = {}
    dropped = []
    for name in names:
        try:
            lifecycle.drop_tenant(engine, name, namespace=ns, tenant_roles=roles)
            dropped.append(name)
        except (TenancyError, sa_exc.DBAPIError) as error:
            failed[name] = message_of(error)
    lines = [f"dropped {n}" for n in dropped] + [f"FAILED {n}: {m}" for n, m in failed.items()]
    emit(args, {"dropped": dropped, "failed": failed}, lines)
    return 1 if failed else 0


def _cmd_rename(args: argparse.Namespace) -> int:
    old, new = checked_names([args.old, args.new])
    ns = namespace_of(args)
    roles = _cli_roles.tenant_roles_of(args)
    engine = engine_of(args)
    try:
        lifecycle.rename_tenant(engine, old, new, namespace=ns, tenant_roles=roles)
    except (TenancyError, sa_exc.DBAPIError) as error:
        emit(args, {"renamed": None, "failed": {old: message_of(error)}},
              [f"FAILED {old}: {message_of(error)}"])  # fmt: skip
        return 1
    emit(args, {"renamed": {old: new}, "failed": {}}, [f"renamed {old} -> {new}"])
    return 0


def _cmd_adopt(args: argparse.Namespace) -> int:
    from . import _adopt

    schema, tenant = _adopt.check_names(args.schema, args.as_tenant)
    ns = namespace_of(args)
    # Never ./alembic.ini implicitly: stamping claims the schema's tables are at head.
    if args.config is not None and not Path(args.config).exists():
        fail(f"no Alembic configuration at {args.config!r}; pass the project's alembic.ini")
    engine = engine_of(args)
    try:
        done = _adopt.adopt(
            engine, schema, as_tenant=tenant, alembic_config=args.config, namespace=ns
        )
    except (TenancyError, sa_exc.DBAPIError) as error:
        if isinstance(error, (InvalidSchemaName, sa_exc.OperationalError)):
            raise
        emit(args, {"adopted": None, "failed": {schema: message_of(error)}},
              [f"FAILED {schema}: {message_of(error)}"])  # fmt: skip
        return 1
    data = {"schema": done.schema, "tenant": done.tenant, "revision": done.revision,
            "moved": done.moved}  # fmt: skip
    line = f"adopted {done.schema} as tenant {done.tenant} (revision {done.revision})"
    moved = [f"  moved {m}" for m in done.moved]
    emit(args, {"adopted": data, "failed": {}}, [line, *moved])
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    ns = namespace_of(args)
    engine = engine_of(args)
    names = lifecycle.list_tenants(engine, namespace=ns)
    if args.json:
        print(json.dumps(names))
    else:
        for name in names:
            print(name)
    return 0


def _cmd_alembic_init(args: argparse.Namespace) -> int:
    target = Path(args.directory)
    ini = target / "alembic.ini"
    env = target / "env.py"
    if ini.exists() or env.exists():
        fail(f"{target} already holds an Alembic environment; choose an empty directory")
    (target / "versions").mkdir(parents=True, exist_ok=True)
    ini.write_text(_templates.ALEMBIC_INI.format(ini=ini), encoding="utf-8")
    env.write_text(_templates.ENV_PY, encoding="utf-8")
    (target / "script.py.mako").write_text(_templates.SCRIPT_MAKO, encoding="utf-8")
    print(f"wrote {ini}, {env}, {target / 'script.py.mako'} and {target / 'versions'}/")
    print(f"next: alembic -c {ini} revision -m 'first'; sa-tenancy migrate --config {ini}")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from ._progress import ProgressLine
    from .migrate import migrate_tenants

    config = config_of(args, required=True)
    assert config is not None
    tenants = checked_names(args.tenant) if args.tenant else None
    ns = namespace_of(args)
    if args.jobs < 1 or args.canary < 0:
        fail("--jobs must be at least 1 and --canary at least 0")
    engine_of(args).dispose()  # a connection error is exit 2, before any worker starts
    stream = sys.stderr if args.json else sys.stdout
    progress = ProgressLine(stream, tty=stream.isatty(), label="migrate")
    try:
        report = migrate_tenants(
            url_of(args), config, jobs=args.jobs, tenants=tenants, canary=args.canary,
            lock_timeout=args.lock_timeout, statement_timeout=args.statement_timeout,
            progress=progress, namespace=ns,
        )  # fmt: skip
    finally:
        progress.close()
    summary = report.as_dict()
    rate = (summary["migrated"] / report.seconds) if report.seconds else 0.0
    lines = [
        f"target {report.target}: {report.total} tenants, {summary['migrated']} migrated, "
        f"{report.skipped + summary['current']} already at target, {summary['busy']} busy "
        f"(another deployer), {len(report.failed)} failed, in {report.seconds:.1f}s "
        f"({rate:.1f} tenants/s)"
    ]
    lines += [f"FAILED {r.schema}: {r.error}" for r in report.failed]
    if report.stopped_by_canary:
        lines.append(f"canary failed: stopped; {len(report.not_attempted)} tenants not attempted")
    emit(args, summary, lines)
    return 0 if report.ok else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from .migrate import tenant_status

    config = config_of(args, required=False)
    ns = namespace_of(args)
    engine = engine_of(args)
    report = tenant_status(engine, config=config, verify=args.verify, namespace=ns)
    lines = [
        f"head {report.head}: {len(report.tenants)} tenants"
        + (", verified against each tenant's alembic_version" if report.verified else "")
    ]
    lines += [f"  {rev}: {count}" for rev, count in report.by_revision().items()]
    behind = report.behind
    for row in behind[: args.limit]:
        extra = f" (alembic_version says {row.get('actual')})" if "actual" in row else ""
        lines.append(f"{row['state'].upper()} {row['schema']}: {row['revision']}{extra}")
    if len(behind) > args.limit:
        lines.append(f"... and {len(behind) - args.limit} more not current (see --json)")
    emit(args, report.as_dict(), lines)
    return 0 if report.ok else 1


def _cmd_reservoir(args: argparse.Namespace) -> int:
    template = checked_names([args.clone_from])[0] if args.clone_from else None
    metadata = load_metadata(args.metadata) if args.metadata else None
    config = None if template else config_of(args, required=False)
    ns = namespace_of(args)
    engine = engine_of(args)
    made: list[str] = []
    if args.fill:
        made = reservoir.fill_reservoir(engine, args.fill, template=template, metadata=metadata,
                                        alembic_config=config, namespace=ns)  # fmt: skip
    size = reservoir.reservoir_size(engine, namespace=ns)
    emit(args, {"added": made, "spares": size}, [f"added {len(made)} spares; {size} waiting"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation tools and tests)."""
    url_help = "database URL (default: $DATABASE_URL)"
    ns_help = (
        f"the namespace whose tenants to work on (default: ${NAMESPACE_ENV}, else the default "
        f"namespace); {_namespace.RULE}"
    )
    # The same options after the command; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    common.add_argument("--namespace", metavar="NAME", default=argparse.SUPPRESS, help=ns_help)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Schema-per-tenant lifecycle and migrations for SQLAlchemy.",
        epilog=(
            "--url and --namespace may come before or after the command. Every command that "
            "creates, drops, lists, migrates or reports tenants works in one namespace only: "
            f"--namespace NAME, else ${NAMESPACE_ENV}, else the default namespace."
        ),
    )
    parser.add_argument("--url", default=None, help=url_help)
    parser.add_argument("--namespace", metavar="NAME", default=None, help=ns_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("create", parents=[common], help="create tenants")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--clone-from", metavar="TEMPLATE", help="copy this tenant's structure")
    p.add_argument("--data", action="store_true", help="with --clone-from: copy rows too")
    p.add_argument("--claim", action="store_true", help="claim spare schemas from the reservoir")
    p.add_argument("--metadata", metavar="MODULE:ATTR", help="MetaData to create tables from")
    p.add_argument("--config", help="alembic.ini (default: ./alembic.ini if present)")
    _cli_roles.add_tenant_roles_flag(p, "make")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_create)

    p = sub.add_parser("drop", parents=[common], help="drop tenants and their data")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _cli_roles.add_tenant_roles_flag(p, "drop")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_drop)

    p = sub.add_parser("rename", parents=[common], help="rename a tenant")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    _cli_roles.add_tenant_roles_flag(p, "rename")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_rename)

    p = sub.add_parser("adopt", parents=[common], help="make an existing schema a tenant")
    p.add_argument("schema", metavar="SCHEMA", help="the schema to adopt (public: --as needed)")
    p.add_argument("--as", dest="as_tenant", metavar="NAME", help="the tenant's name")
    p.add_argument("--config", help="alembic.ini: stamp head if SCHEMA has no alembic_version")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_adopt)

    p = sub.add_parser("list", parents=[common], help="list tenants")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("alembic-init", help="write a per-tenant Alembic environment")
    p.add_argument("directory", metavar="DIR")
    p.set_defaults(func=_cmd_alembic_init)

    p = sub.add_parser("migrate", parents=[common], help="upgrade tenants to head")
    p.add_argument("--config", default=None, help="alembic.ini (default: ./alembic.ini)")
    p.add_argument("--jobs", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                   help="worker processes (default: CPU count, at most 8)")  # fmt: skip
    p.add_argument("--tenant", nargs="+", metavar="NAME", help="only these tenants")
    p.add_argument("--canary", type=int, default=0, metavar="N",
                   help="migrate N tenants first; stop if any of them fails")  # fmt: skip
    p.add_argument("--lock-timeout", default="10s", help="per tenant (default: 10s)")
    p.add_argument("--statement-timeout", default=None, help="per tenant (default: server's)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("status", parents=[common], help="which tenant is at which revision")
    p.add_argument("--config", default=None, help="alembic.ini, to compare with head")
    p.add_argument("--verify", action="store_true",
                   help="also read each tenant's alembic_version (slower)")  # fmt: skip
    p.add_argument("--limit", type=int, default=20, help="tenants listed in plain output")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("reservoir", parents=[common], help="spare pre-built schemas")
    p.add_argument("--fill", type=int, default=0, metavar="N", help="add N spares")
    p.add_argument("--clone-from", metavar="TEMPLATE", help="build spares as copies of this")
    p.add_argument("--metadata", metavar="MODULE:ATTR", help="MetaData to create tables from")
    p.add_argument("--config", help="alembic.ini (default: ./alembic.ini if present)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_reservoir)
    _cli_roles.add_parser(sub, common)
    _cli_citus.add_commands(sub, common)  # move, placement
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 some tenants failed, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, InvalidSchemaName) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except sa_exc.OperationalError as error:
        print(f"{PROG}: error: database error: {message_of(error)}", file=sys.stderr)
        return 2
    except TenancyError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun to resume (finished tenants are skipped)",
              file=sys.stderr)  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
