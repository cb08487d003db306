"""The drift report: which tenant is at which Alembic revision.

The cheap answer comes from the ledger (:mod:`sa_tenancy._ledger`), in one query, however many
tenants there are. ``verify=True`` also reads every tenant's own ``alembic_version``, to catch
a tenant migrated behind the library's back; it does so a bounded number of tenants per
connection, because one backend that opens thousands of tenants' tables keeps all of their
catalog entries in memory for the rest of its life.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from . import _ledger
from ._alembic import head_revision
from ._namespace import check

if TYPE_CHECKING:
    from ._alembic import AlembicConfig


@dataclass
class StatusReport:
    """Which tenant is at which revision (:func:`tenant_status`)."""

    head: str | None
    tenants: list[dict[str, Any]] = field(default_factory=list)
    verified: bool = False
    seconds: float = 0.0

    def by_revision(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.tenants:
            key = str(row["revision"])
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def behind(self) -> list[dict[str, Any]]:
        return [row for row in self.tenants if row["state"] != "current"]

    @property
    def ok(self) -> bool:
        return not self.behind

    def as_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "total": len(self.tenants),
            "by_revision": self.by_revision(),
            "not_current": self.behind,
            "verified": self.verified,
            "seconds": round(self.seconds, 3),
        }


StatusReport.__module__ = "sa_tenancy"


def tenant_status(
    bind: Engine,
    *,
    config: AlembicConfig | None = None,
    verify: bool = False,
    include_spares: bool = True,
    per_connection: int = 2000,
    namespace: str | None = None,
) -> StatusReport:
    """Report each tenant's revision from the ledger; compare with head if ``config`` is given.

    Each row is ``{"schema", "kind" ("tenant"/"spare"), "revision", "state"}``, where
    ``state`` is ``"current"``, ``"behind"`` (not at head), ``"unknown"`` (no ledger row: made
    outside sa_tenancy) or, with ``verify``, ``"mismatch"`` (the tenant's own
    ``alembic_version`` disagrees with the ledger: something migrated it behind the library's
    back). Without ``config`` every tenant with a ledger row counts as current.

    ``verify`` reads every tenant's ``alembic_version`` in ``UNION ALL`` batches, on a fresh
    connection every ``per_connection`` tenants, so no backend accumulates the catalog entries
    of the whole fleet.

    Only the tenants (and spares) of ``namespace`` are reported (default: the default
    namespace); the report stays one query over the catalog and the ledger.
    """
    ns = check(namespace)
    started = time.monotonic()
    head = head_revision(config) if config is not None else None
    report = StatusReport(head=head, verified=verify)
    with bind.connect() as conn:
        rows = _ledger.marked_schemas(conn, (_ledger.tenant_mark(ns), _ledger.spare_mark(ns)))
    for schema, mark, revision, in_ledger in rows:
        kind = "spare" if mark == _ledger.spare_mark(ns) else "tenant"
        if kind == "spare" and not include_spares:
            continue
        if not in_ledger:
            state = "unknown"
        elif head is not None and revision != head:
            state = "behind"
        else:
            state = "current"
        row: dict[str, Any] = {"schema": schema, "kind": kind, "revision": revision, "state": state}
        report.tenants.append(row)
    if verify:
        actual = _read_versions(bind, [row["schema"] for row in report.tenants], per_connection)
        for row in report.tenants:
            if row["state"] != "unknown" and actual.get(row["schema"]) != row["revision"]:
                row["state"] = "mismatch"
                row["actual"] = actual.get(row["schema"])
    report.seconds = time.monotonic() - started
    return report


def _read_versions(bind: Engine, schemas: list[str], per_connection: int) -> dict[str, str | None]:
    found: dict[str, list[str]] = {}
    q = _ledger.ident
    engine = create_engine(bind.url, poolclass=NullPool)
    try:
        for start in range(0, len(schemas), per_connection):
            group = schemas[start : start + per_connection]
            with engine.connect() as conn:
                having = [
                    r[0]
                    for r in conn.execute(
                        text(
                            "SELECT s FROM unnest(CAST(:names AS text[])) s "
                            "WHERE to_regclass(format('%I.alembic_version', s)) IS NOT NULL"
                        ),
                        {"names": group},
                    )
                ]
                for i in range(0, len(having), 500):
                    part = having[i : i + 500]
                    sql = " UNION ALL ".join(
                        f"SELECT {_literal(s)}, version_num FROM {q(s)}.alembic_version"
                        for s in part
                    )
                    for schema, version in _ledger.execute_ddl(conn, sql):
                        found.setdefault(schema, []).append(version)
    finally:
        engine.dispose()
    return {s: _ledger.join_revisions(found.get(s, [])) for s in schemas}


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
