"""Deciding that a request failed because its tenant does not exist (the ``404`` case).

Whether a tenant exists is only known to the database, and the two strategies learn it
differently:

``search_path`` (and SQLite tenant files)
    The transaction begin checks the schema in the same round trip that sets the path and raises
    :class:`~sa_tenancy.UnknownSchema` before the first statement runs. That is a ``404``.

``translate_map``
    Nothing is checked in advance (that is the point: no round trip). The first statement fails
    with the database's own error, e.g. PostgreSQL's ``relation "acme.notes" does not exist``.
    The same error also means "the tenant exists but lacks a table" (a half-applied
    migration), which is a server fault, not a ``404``. So when a tenant request fails with a
    ``ProgrammingError`` or ``OperationalError``, the schema's existence is checked *then*, on a
    fresh connection (``Inspector.has_schema``): missing → ``404``; present → the original
    error propagates (``500``).

Why not check existence up front, with a cache to save the round trip? A cache that says
"exists" keeps saying it after the tenant is dropped, and a cache that says "missing" keeps
refusing a tenant created a moment later. Checking on the error path costs nothing on the happy
path and is always current.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..exc import UnknownSchema

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["bind_of", "could_be_missing", "tenant_missing", "tenant_missing_async", "unknown"]

# Errors a missing schema can surface as: PostgreSQL 42P01/3F000 and MySQL 1146 are
# ProgrammingErrors, MySQL 1049 and SQLite's "no such table" OperationalErrors.
_MAYBE_MISSING = (sa_exc.ProgrammingError, sa_exc.OperationalError)


def unknown(schema: str) -> str:
    """The ``detail`` of a ``404``."""
    return f"unknown tenant {schema!r}"


def could_be_missing(exc: BaseException) -> bool:
    """Whether ``exc`` may mean that the tenant does not exist (a check is then worth it)."""
    return isinstance(exc, _MAYBE_MISSING)


def bind_of(session: Session) -> Engine | None:
    """The engine of ``session``, if it has exactly one (``None`` otherwise)."""
    try:
        bind = session.get_bind()
    except sa_exc.UnboundExecutionError:
        return None
    if isinstance(bind, Connection):
        return bind.engine
    return bind


def _has_schema(conn: Connection, schema: str) -> bool:
    return bool(inspect(conn).has_schema(schema))


def tenant_missing(exc: BaseException, bind: Engine | None, schema: str) -> bool:
    """Whether ``exc``, raised by a session for ``schema``, means the tenant does not exist.

    Close the session first: the check needs a connection, and with a small pool the session
    may hold the only one.
    """
    if isinstance(exc, UnknownSchema):
        return True
    if not could_be_missing(exc) or bind is None or bind.dialect.name == "sqlite":
        return False  # SQLite tenant files raise UnknownSchema themselves
    try:
        with bind.connect() as conn:
            return not _has_schema(conn, schema)
    except Exception:
        return False  # cannot tell (server gone?): let the original error speak


async def tenant_missing_async(exc: BaseException, bind: AsyncEngine | Any, schema: str) -> bool:
    """:func:`tenant_missing` for an ``AsyncSession``; ``bind`` is its ``AsyncEngine``."""
    if isinstance(exc, UnknownSchema):
        return True
    sync_engine = getattr(bind, "sync_engine", None)
    if not could_be_missing(exc) or sync_engine is None or sync_engine.dialect.name == "sqlite":
        return False
    try:
        async with bind.connect() as conn:
            return not await conn.run_sync(_has_schema, schema)
    except Exception:
        return False
