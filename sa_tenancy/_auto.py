"""``strategy="auto"`` (a strategy per dialect) and ``install()``'s ``strategy=`` (private).

Kept apart from :mod:`sa_tenancy.strategies` so that imports go one way: this module builds on
both :mod:`~sa_tenancy.strategies` and :mod:`~sa_tenancy.sqlite`, and neither imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from .exc import TenancyError
from .sqlite import SQLiteFiles
from .strategies import SearchPath
from .strategies import Strategy
from .strategies import TranslateMap

if TYPE_CHECKING:
    from ._roles import TenantRoles

__all__ = ["Auto", "resolve_strategy"]


class Auto:
    """Pick the strategy by dialect, per connection: the one-line default for portable code.

    PostgreSQL gets :class:`~sa_tenancy.SearchPath` (raw SQL follows the tenant), SQLite gets
    :class:`~sa_tenancy.SQLiteFiles` (tenants as attached files beside the main database), and
    every other dialect :class:`~sa_tenancy.TranslateMap`. ``tenant_roles`` goes to the
    PostgreSQL strategy; on any other dialect it is refused at begin (there is nothing to
    enforce it with), never ignored.
    """

    name = "auto"

    def __init__(
        self,
        *,
        extra_schemas: Iterable[str] = (),
        allow_raw_sql: bool = False,
        tenant_roles: bool | TenantRoles = False,
    ) -> None:
        self.tenant_roles = bool(tenant_roles)
        self.by_dialect: dict[str, Strategy] = {
            "postgresql": SearchPath(extra_schemas=extra_schemas, tenant_roles=tenant_roles),
            "sqlite": SQLiteFiles(allow_raw_sql=allow_raw_sql),
        }
        self.default: Strategy = TranslateMap(allow_raw_sql=allow_raw_sql)

    def apply(self, connection: Connection, schema: str | None) -> None:
        dialect = connection.dialect.name
        if self.tenant_roles and schema is not None and dialect != "postgresql":
            raise TenancyError(f"tenant_roles needs PostgreSQL; this connection is {dialect}")
        self.by_dialect.get(connection.dialect.name, self.default).apply(connection, schema)

    def __repr__(self) -> str:
        return "Auto()"


Auto.__module__ = "sa_tenancy"


def resolve_strategy(
    strategy: str | Strategy,
    *,
    extra_schemas: Iterable[str] = (),
    allow_raw_sql: bool = False,
    tenant_roles: bool | TenantRoles = False,
) -> Strategy:
    """Turn ``install()``'s ``strategy=`` argument into a :class:`~sa_tenancy.Strategy` object."""
    if strategy == "search_path":
        return SearchPath(extra_schemas=extra_schemas, tenant_roles=tenant_roles)
    if strategy == "auto":
        return Auto(
            extra_schemas=extra_schemas, allow_raw_sql=allow_raw_sql, tenant_roles=tenant_roles
        )
    if strategy == "translate_map":
        if tuple(extra_schemas):
            raise TenancyError(
                "extra_schemas applies to the search_path strategy only; with translate_map, "
                "declare shared tables with an explicit schema instead"
            )
        return TranslateMap(allow_raw_sql=allow_raw_sql, tenant_roles=tenant_roles)
    if isinstance(strategy, str):
        raise TenancyError(
            f"unknown strategy {strategy!r}: use 'search_path', 'translate_map', 'auto' or an "
            "object with an apply(connection, schema) method"
        )
    if not isinstance(strategy, Strategy):
        raise TenancyError(f"{strategy!r} is not a Strategy: it needs apply(connection, schema)")
    if tenant_roles:
        raise TenancyError(
            "tenant_roles= applies to the named strategies; for a strategy object pass it to "
            "its constructor, e.g. SearchPath(tenant_roles=True)"
        )
    return strategy
