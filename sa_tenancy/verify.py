"""An opt-in pool-leak detector: prove, connection by connection, that no tenant stays behind.

sa_tenancy's strategies leave nothing on a pooled connection by construction: the
``search_path`` is set with ``set_config(..., true)`` (gone at ``COMMIT``/``ROLLBACK``) and the
translate map lives on a ``Connection`` object that dies with its transaction. That is a claim
about *this* library. An application also runs other code on the same engine: a hand-written
``SET search_path``, a listener from another package, a ``USE tenant`` on MySQL. Any of them can
leave a tenant on a connection that the pool then hands to the next request.

:func:`verify_checkin` watches an engine's pool. When a DBAPI connection is first made it
records the server's default (``SHOW search_path`` on PostgreSQL, ``SELECT DATABASE()`` on
MySQL/MariaDB); every time a connection is checked in, it asks again, and each new
``Connection`` is checked for a tenant translate map left in its execution options. A
difference is a leak:

* the connection is **invalidated** at once, so the leaked state cannot reach anyone;
* ``on_leak="log"`` logs an error on the ``sa_tenancy.verify`` logger;
* ``on_leak="raise"`` (the default) also logs, then raises :class:`PoolLeak` at the next
  checkout from that engine. Raising inside the pool's check-in would lose the pool slot, so
  the error surfaces at the next ``engine.connect()`` or session transaction instead.

It costs two round trips per check-in (the query and the ``ROLLBACK`` that ends the
transaction the query opened), so it is off by default: turn it on in tests, staging, or a
canary.

Example::

    engine = create_engine(url)
    detector = sa_tenancy.verify_checkin(engine)   # raise on the next checkout after a leak
    ...
    assert detector.leaks == []
    detector.remove()
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from typing import Literal

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool import PoolProxiedConnection

from .exc import TenancyError

__all__ = ["LeakDetector", "PoolLeak", "verify_checkin"]

logger = logging.getLogger("sa_tenancy.verify")

_DEFAULT_KEY = "sa_tenancy_default_state"
_TENANT_OPTION = "sa_tenancy_schema"  # set by TranslateMap on a tenant transaction's Connection
_QUERIES = {"postgresql": "SHOW search_path", "mysql": "SELECT DATABASE()"}


class PoolLeak(TenancyError):
    """A pooled connection came back carrying a tenant (or other session state) it should not.

    The connection has already been discarded. The message says what was found; look for code
    that runs a session-level ``SET search_path`` / ``USE`` or keeps a translate map on a
    long-lived ``Connection``.
    """


class LeakDetector:
    """The check-in verification of one engine, made by :func:`verify_checkin`.

    :attr:`leaks` lists a description of every leak found so far; :attr:`checked` counts the
    check-ins verified. :meth:`remove` turns the detector off.
    """

    def __init__(self, engine: Engine, *, on_leak: Literal["raise", "log"]) -> None:
        if on_leak not in ("raise", "log"):
            raise TenancyError(f"on_leak must be 'raise' or 'log', not {on_leak!r}")
        self.engine = engine
        self.on_leak = on_leak
        self.query = _QUERIES.get(engine.dialect.name)
        self.leaks: list[str] = []
        self.checked = 0
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._listeners: list[tuple[Any, str, Any]] = []

    # -- listeners ---------------------------------------------------------------------------

    def _read(self, dbapi_connection: Any) -> object:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(self.query)
            row = cursor.fetchone()
        finally:
            cursor.close()
        if not getattr(dbapi_connection, "autocommit", False):
            dbapi_connection.rollback()  # end the transaction the query opened
        return row[0] if row else None

    def _on_connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_DEFAULT_KEY] = self._read(dbapi_connection)

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is None or _DEFAULT_KEY not in record.info:
            return  # invalidated or never verified: nothing to hand out again
        expected = record.info[_DEFAULT_KEY]
        try:
            found = self._read(dbapi_connection)
        except Exception as exc:
            # The state is unknown: discard the connection rather than hand it out unchecked.
            logger.warning("could not verify a checked-in connection (%s); discarded", exc)
            record.invalidate(exc)
            return
        with self._lock:
            self.checked += 1
        if found != expected:
            what = "search_path" if self.engine.dialect.name == "postgresql" else "database"
            self._leak(
                f"a connection was checked in with {what} {found!r} instead of the server "
                f"default {expected!r}; it was discarded. Some code set it outside a "
                "transaction-scoped strategy (a session-level SET search_path or USE)."
            )
            record.invalidate()

    def _on_engine_connect(self, connection: Connection) -> None:
        schema = connection.get_execution_options().get(_TENANT_OPTION)
        if schema is not None:
            connection.invalidate()
            self._leak(
                f"a new Connection carries the translate map of tenant {schema!r}: execution "
                "options were set on the engine instead of on one transaction's connection"
            )
        self._raise_pending()

    def _on_checkout(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        self._raise_pending()

    def _leak(self, message: str) -> None:
        logger.error("sa_tenancy pool leak: %s", message)
        with self._lock:
            self.leaks.append(message)
            if self.on_leak == "raise":
                self._pending.append(message)

    def _raise_pending(self) -> None:
        if not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            raise PoolLeak(f"{len(pending)} leak(s) found at check-in: {pending[0]}")

    # -- life cycle --------------------------------------------------------------------------

    def _register(self) -> None:
        pool_listeners: list[tuple[str, Any]] = [("checkout", self._on_checkout)]
        if self.query is not None:
            pool_listeners += [("connect", self._on_connect), ("checkin", self._on_checkin)]
        for name, fn in pool_listeners:
            event.listen(self.engine.pool, name, fn)
            self._listeners.append((self.engine.pool, name, fn))
        event.listen(self.engine, "engine_connect", self._on_engine_connect)
        self._listeners.append((self.engine, "engine_connect", self._on_engine_connect))
        self.engine.pool.__dict__["_sa_tenancy_leak_detector"] = self

    def remove(self) -> None:
        """Stop verifying. Idempotent."""
        for target, name, fn in self._listeners:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        self._listeners.clear()
        if self.engine.pool.__dict__.get("_sa_tenancy_leak_detector") is self:
            del self.engine.pool.__dict__["_sa_tenancy_leak_detector"]

    def __repr__(self) -> str:
        return (
            f"LeakDetector(on_leak={self.on_leak!r}, checked={self.checked}, "
            f"leaks={len(self.leaks)})"
        )


def verify_checkin(engine: Any, *, on_leak: Literal["raise", "log"] = "raise") -> LeakDetector:
    """Verify, at every check-in, that ``engine``'s pooled connections carry no tenant.

    :param engine: an ``Engine`` or ``AsyncEngine`` (its ``sync_engine`` is used). Call this
        before the engine makes its first connection: connections made earlier have no recorded
        default and are not verified.
    :param on_leak: ``"raise"`` (default): log, discard the connection and raise
        :class:`PoolLeak` at the next checkout; ``"log"``: log and discard only.
    :returns: a :class:`LeakDetector`; ``.leaks`` lists what was found, ``.remove()`` undoes it.
    :raises TenancyError: if the engine already has a detector.

    .. warning::
       Two extra round trips per check-in. Use it in tests, staging or a canary, not on every
       production connection.
    """
    sync_engine: Engine = getattr(engine, "sync_engine", engine)
    if "_sa_tenancy_leak_detector" in sync_engine.pool.__dict__:
        raise TenancyError("this engine already has a leak detector; call .remove() on it first")
    detector = LeakDetector(sync_engine, on_leak=on_leak)
    detector._register()
    return detector


for _cls in (LeakDetector, PoolLeak):
    _cls.__module__ = "sa_tenancy"
del _cls
