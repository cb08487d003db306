"""psycopg 3: a tenant's ``search_path`` travels in the same message as ``BEGIN`` (private).

psycopg 3 sends its own ``BEGIN``, as a separate round trip, just before the first statement of a
transaction (when the connection is idle and not in autocommit). A tenant transaction would pay a
round trip for ``BEGIN``, one for ``set_config``, then its work; a plain one only ``BEGIN`` and its
work. Instead, when the connection is idle, :class:`~sa_tenancy.SearchPath` sends ONE
simple-query message first::

    BEGIN <psycopg's own options>; [DISCARD TEMP;] SET LOCAL search_path TO "acme", pg_temp;
    SELECT current_schema()

The server opens the transaction, sets the path and answers in one round trip; psycopg then sees
the connection in a transaction and sends no ``BEGIN`` of its own; ``COMMIT`` and ``ROLLBACK``
stay psycopg's. PgBouncer in transaction mode pins the server connection from that message on,
exactly as for psycopg's own ``BEGIN``.

This uses psycopg's low-level ``pgconn`` and its ``generators``/``wait`` machinery, which are
stable since psycopg 3.0 but not its documented high-level API: :func:`available` says whether
they are there, and when they are not, :func:`begin_with_path` sends nothing and the caller uses
the portable ``set_config`` statement (one round trip more, same guarantees).
"""

from __future__ import annotations

import functools
from typing import Any
from typing import NoReturn

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

__all__ = ["NOT_SENT", "available", "begin_with_path", "begin_with_path_sql"]


@functools.cache
def available() -> bool:
    """Whether this psycopg has the low-level pieces the one-message ``BEGIN`` needs.

    Asked on first use, not at import: importing sa_tenancy must not import a driver.
    """
    try:
        import psycopg
        from psycopg import generators
    except ImportError:
        return False
    # pgconn and lock are instance attributes, checked on each connection by begin_with_path.
    return hasattr(psycopg.Connection, "wait") and hasattr(generators, "execute")


NOT_SENT = object()
#: ``SET``'s spelling of a path that names no schema.
EMPTY_PATH = "''"


@functools.lru_cache(maxsize=64)
def _begin_statement(
    isolation_level: int | None, read_only: bool | None, deferrable: bool | None
) -> str:
    """The ``BEGIN`` psycopg would send for these connection attributes (same wording).

    Rebuilt from the public attributes rather than read from psycopg's private cache, so an
    isolation level or read-only mode set by SQLAlchemy is always honoured.
    """
    parts = ["BEGIN"]
    if isolation_level is not None:
        from psycopg import IsolationLevel

        parts.append("ISOLATION LEVEL " + IsolationLevel(isolation_level).name.replace("_", " "))
    if read_only is not None:
        parts.append("READ ONLY" if read_only else "READ WRITE")
    if deferrable is not None:
        parts.append("DEFERRABLE" if deferrable else "NOT DEFERRABLE")
    return " ".join(parts)


def begin_with_path_sql(
    begin: str, path: str, *, check: bool = True, discard_temp: bool = False, role: str = ""
) -> str:
    """The one message that opens a tenant transaction: ``BEGIN``, ``SET LOCAL``, the check.

    A simple-query message (the only kind that may hold several statements) cannot carry bound
    parameters. ``SET LOCAL`` needs none: its value is a list of *identifiers*, and ``path`` is
    made only of validated schema names quoted by the dialect's ``identifier_preparer`` (plus
    ``pg_temp``), the same quoting every DDL statement of the library uses. No string literal is
    built, so there is no literal escaping to get right (``standard_conforming_strings``,
    client encodings), and ``SET LOCAL`` is what ``set_config(..., true)`` does, minus a
    ``SELECT``: about half the server time.

    ``current_schema()`` is the first schema of the path that exists *and* on which the role
    has ``USAGE``: it equals the tenant exactly when the tenant passes both checks.

    ``DISCARD TEMP`` (when the connection may hold another tenant's temporary objects) runs
    inside the transaction, so that a rollback also brings back what it dropped, consistently
    with the owner recorded on the pool entry only at commit.

    ``role`` (a quoted identifier, with ``tenant_roles=True``) comes before the path: the
    rest of the transaction, ``current_schema()`` included, runs as the tenant's role, which
    ``COMMIT`` or ``ROLLBACK`` takes back. If the server refuses the role, it aborts the
    transaction and nothing else of the message runs.
    """
    discard = "DISCARD TEMP; " if discard_temp else ""
    as_role = f"SET LOCAL ROLE {role}; " if role else ""
    statement = f"{begin}; {discard}{as_role}SET LOCAL search_path TO {path or EMPTY_PATH}"
    return statement + "; SELECT current_schema()" if check else statement


def begin_with_path(
    connection: Connection,
    driver_connection: Any,
    path: str,
    *,
    check: bool,
    discard_temp: bool = False,
    role: str = "",
) -> object:
    """Open the transaction and set ``path`` in one round trip; return ``current_schema()``.

    Returns ``NOT_SENT``, having sent nothing, when the trick does not apply: the server
    already has a transaction open (a session joining an outer transaction), the connection is
    in pipeline mode, or the statement cannot be encoded for the connection. The caller then
    sets the path inside the transaction with an ordinary statement, which also reports any
    error the usual way.
    """
    pgconn = getattr(driver_connection, "pgconn", None) if available() else None
    if not hasattr(driver_connection, "lock"):
        pgconn = None
    # 0 is psycopg.pq.TransactionStatus.IDLE and PipelineStatus.OFF
    if pgconn is None or pgconn.transaction_status != 0 or pgconn.pipeline_status != 0:
        return NOT_SENT
    begin = _begin_statement(
        driver_connection.isolation_level,
        driver_connection.read_only,
        driver_connection.deferrable,
    )
    statement = begin_with_path_sql(begin, path, check=check, discard_temp=discard_temp, role=role)
    encoding = driver_connection.info.encoding
    try:
        data = statement.encode(encoding)
    except UnicodeEncodeError:
        return NOT_SENT
    _announce(connection, "before_cursor_execute", statement)
    try:
        if connection.dialect.is_async:
            from sqlalchemy.util import await_only

            results = await_only(_send_async(driver_connection, data))
        else:
            results = _send_sync(driver_connection, data)
    except Exception as error:
        _raise_dbapi(connection, driver_connection, statement, error)
    for result in results:
        if result.status not in (1, 2):  # psycopg.pq.ExecStatus.COMMAND_OK, TUPLES_OK
            from psycopg import errors

            failure = errors.error_from_result(result, encoding=encoding)
            _raise_dbapi(connection, driver_connection, statement, failure)
    _announce(connection, "after_cursor_execute", statement)
    if not check:
        return None
    value = results[-1].get_value(0, 0)
    return None if value is None else bytes(value).decode(encoding)


def _send_sync(conn: Any, statement: bytes) -> Any:
    from psycopg import generators  # imported already by available(): a dictionary lookup

    with conn.lock:
        conn.pgconn.send_query(statement)
        return conn.wait(generators.execute(conn.pgconn))


async def _send_async(conn: Any, statement: bytes) -> Any:
    from psycopg import generators

    async with conn.lock:
        conn.pgconn.send_query(statement)
        return await conn.wait(generators.execute(conn.pgconn))


def _raise_dbapi(
    connection: Connection, driver_connection: Any, statement: str, error: Exception
) -> NoReturn:
    """Raise ``error`` as SQLAlchemy would have: wrapped, invalidating a broken connection."""
    import psycopg

    if not isinstance(error, psycopg.Error):
        raise error
    broken = driver_connection.pgconn.status != 0  # psycopg.pq.ConnStatus.OK
    if broken:
        connection.invalidate(error)
    raise DBAPIError.instance(
        statement,
        None,
        error,
        psycopg.Error,
        connection_invalidated=broken,
        dialect=connection.dialect,
    ) from error


def _announce(connection: Connection, hook: str, statement: str) -> None:
    """Show a statement sent beside SQLAlchemy to its cursor hooks and its echo log.

    Listeners and ``echo=True`` would otherwise never see how the tenant was applied. The
    hooks get ``context=None``, as for the statements SQLAlchemy itself runs outside an
    execution context (sequences, defaults).
    """
    # _has_events: SQLAlchemy's own flag that any connection event is listened to; without it
    # the dispatch attribute is not even looked at (it builds a listener collection).
    listeners = (
        getattr(connection.dispatch, hook)
        if connection._has_events or connection.engine._has_events
        else None
    )
    if listeners:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            listeners(connection, cursor, statement, {}, None, False)
        finally:
            cursor.close()
    if hook == "before_cursor_execute" and connection._echo:
        connection.engine.logger.info("%s", statement)
