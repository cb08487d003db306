"""``max_tenants_per_connection``: bound what one server connection accumulates (private).

A PostgreSQL backend keeps the catalog entries (relation, attribute, index, type caches) of
every table it has touched for as long as it lives: a pooled connection that serves thousands of
tenants ends up holding thousands of tenants' catalogs, hundreds of megabytes per backend, never
released. A time-based ``pool_recycle`` does not track that: a busy connection touches many
tenants per minute, a quiet one few. The number of distinct tenants a connection has served is
what its memory follows, so that is what the limit counts.

The pool entry's ``info`` records the tenants its DBAPI connection has served. When a connection
that has served ``limit`` distinct tenants is checked in, it is soft-invalidated: the pool closes
it and connects anew at its next checkout. So a connection never serves more than ``limit``
tenants, and it is never replaced in the middle of a transaction. SQLAlchemy clears the entry's
``info`` when it reconnects, so the count starts again with the new connection.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool import Pool

from ._events import listen_once
from ._events import remove
from ._keys import SERVED
from .exc import TenancyError

__all__ = ["TenantLimit"]


class TenantLimit:
    """Replace a pooled connection once it has served ``limit`` distinct tenants."""

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise TenancyError(
                f"max_tenants_per_connection must be a whole number of at least 1 (or None), "
                f"not {limit!r}"
            )
        self.limit = limit
        self._pools: weakref.WeakSet[Pool] = weakref.WeakSet()  # a fast path, not the record

    def served(self, connection: Connection, schema: str) -> None:
        """Count ``schema`` as served by the DBAPI connection of ``connection``."""
        home = connection.connection.info
        tenants: set[str] | None = home.get(SERVED)
        if tenants is None:
            tenants = home[SERVED] = set()
        tenants.add(schema)
        pool = connection.engine.pool
        if pool not in self._pools:
            listen_once(pool, "checkin", self._on_checkin)
            self._pools.add(pool)

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None and len(record.info.get(SERVED, ())) >= self.limit:
            record.invalidate(soft=True)  # closed and reconnected at its next checkout

    def remove(self) -> None:
        """Stop replacing connections (``uninstall()``)."""
        for pool in list(self._pools):
            remove(pool, "checkin", self._on_checkin)
        self._pools.clear()

    def __repr__(self) -> str:
        return f"TenantLimit({self.limit})"
