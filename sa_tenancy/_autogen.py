"""Autogenerate against a tenant: compare the models with the tenant's own tables, nothing else.

``alembic -x tenant=NAME revision --autogenerate`` compares the models' schema-less tables with
what the tenant's ``search_path`` shows. Two things on that path are not the models' business:
the tenant's ``alembic_version`` (Alembic skips its version table only when it sits in the
compared schema, and here it sits in the tenant while the models' tables have no schema), and,
with ``extra_schemas``, the tables of ``public`` or any other extra schema, which the path shows
as if they were the tenant's. Without these filters every generated revision would start with
``op.drop_table("alembic_version")`` and drop ``public``'s tables too; applied as generated, it
fails for every tenant. sa_tenancy's ledger schema is never compared either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from . import _ledger

_VERSION_TABLE = "alembic_version"


def add_filters(configure_kwargs: dict[str, Any], conn: Connection, schema: str) -> None:
    """Put sa_tenancy's ``include_name``/``include_object`` in front of the user's own, if any.

    An object is compared only if both filters include it.
    """
    version_table = configure_kwargs.get("version_table", _VERSION_TABLE)
    own = TenantNames(conn, schema, version_table)
    for key, ours in (("include_name", own.include_name), ("include_object", own.include_object)):
        configure_kwargs[key] = _both(ours, configure_kwargs.get(key))


def _both(ours: Callable[..., bool], theirs: Callable[..., bool] | None) -> Callable[..., bool]:
    """A filter that includes an object only if sa_tenancy's and the user's filters both do."""
    if theirs is None:
        return ours

    def include(*args: Any) -> bool:
        return ours(*args) and bool(theirs(*args))

    return include


class TenantNames:
    """Autogenerate's view of one tenant: its own tables, minus sa_tenancy's bookkeeping.

    Alembic calls the filters only while it compares, so the one catalog query that lists the
    tenant's own relations is made lazily, and never by an upgrade.
    """

    def __init__(self, conn: Connection, schema: str, version_table: str) -> None:
        self.conn = conn
        self.schema = schema
        self.version_table = version_table
        self._tables: set[str] | None = None

    def _in_tenant(self, name: str) -> bool:
        if self._tables is None:
            rows = self.conn.execute(
                text(
                    "SELECT relname FROM pg_catalog.pg_class "
                    "WHERE relnamespace = to_regnamespace(quote_ident(:s))"
                ),
                {"s": self.schema},
            )
            self._tables = {r[0] for r in rows}
        return name in self._tables

    def _keeps(self, name: str | None, type_: str, schema: str | None) -> bool:
        if schema == _ledger.LEDGER_SCHEMA:
            return False
        if type_ == "schema":
            return name != _ledger.LEDGER_SCHEMA
        if type_ != "table" or name is None:
            return True
        if schema in (None, self.schema) and name == self.version_table:
            return False
        return schema is not None or self._in_tenant(name)

    def include_name(self, name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        return self._keeps(name, type_, parent_names.get("schema_name"))

    def include_object(
        self, obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        if not reflected or type_ != "table":
            return True
        return self._keeps(name, type_, obj.schema)
