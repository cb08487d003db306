"""The statement guard: a dialect-level hook that refuses statements that must not run (private).

Two kinds of statement are refused just before they reach the DBAPI cursor:

* **any statement on a Connection that lost its tenant's transaction.** A Connection shared by
  sessions (a session bound to a ``Connection``) can see the transaction in which the tenant
  was applied end under an open session: another session sharing it rolled it back, or the
  caller did. SQLAlchemy would then begin a new transaction, without the tenant, at the next
  statement; the guard refuses it instead (:class:`~sa_tenancy.SchemaSwitchError`).
* **any statement on a refused Connection.** When a session's begin is refused because the
  DBAPI connection already serves another tenant's open session (``StaticPool``, one
  ``Connection`` shared by several sessions), that session's ``Connection`` object cannot be
  invalidated (it would break the other session); it is marked instead, and every statement on
  it raises :class:`~sa_tenancy.SchemaSwitchError`.
* **raw SQL in a** ``translate_map`` **tenant transaction** (``text()``, ``exec_driver_sql``):
  SQLAlchemy cannot rewrite it, so it would run against the default schema.
  :class:`~sa_tenancy.RawSQLRefused` unless allowed per statement or per installation.

The guard is a ``DialectEvents`` hook (``do_execute`` and friends) rather than a
``before_cursor_execute`` engine event: engine events make SQLAlchemy dispatch half a dozen
hooks around every statement of every connection, a dialect hook costs one loop per statement.
It is registered on an engine only when first needed, and acts only on connections that carry
one of sa_tenancy's options: every other statement pays two dictionary lookups.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ReleaseSavepointClause
from sqlalchemy.sql.elements import RollbackToSavepointClause
from sqlalchemy.sql.elements import SavepointClause
from sqlalchemy.sql.elements import TextClause

from ._events import listen_once
from ._keys import ALLOW_RAW_SQL
from ._keys import CLAIM_OPTION
from ._keys import REFUSED_OPTION
from ._keys import TENANT_OPTION
from .exc import RawSQLRefused
from .exc import SchemaSwitchError

__all__ = ["ensure_guard"]

_GUARDED = "_sa_tenancy_guarded"  # set in an engine's __dict__ once its dialect is guarded


def _check(statement: str, context: Any) -> None:
    if context is None:
        return
    options = context.execution_options
    refused = options.get(REFUSED_OPTION)
    if refused:
        raise SchemaSwitchError(refused)
    claim = options.get(CLAIM_OPTION)
    if claim is not None and not claim.in_scope() and not _transaction_control(context):
        raise SchemaSwitchError(
            f"the transaction in which this connection was given tenant {claim.schema!r} has "
            "ended (rolled back or committed by another session or by the code that shares "
            "this Connection); a new one would run without the tenant. Roll back or close the "
            "session."
        )
    schema = options.get(TENANT_OPTION)
    if schema is None or options.get(ALLOW_RAW_SQL):
        return
    compiled = context.compiled
    if compiled is not None and not isinstance(compiled.statement, TextClause):
        return
    raise RawSQLRefused(
        f"raw SQL in a tenant transaction for schema {schema!r}: the translate_map strategy "
        "cannot rewrite it and it would run against the default schema. Qualify the names "
        "yourself, use the search_path strategy, or allow it explicitly with "
        f"execution_options({ALLOW_RAW_SQL}=True) (or install(..., allow_raw_sql=True)). "
        f"Statement: {statement[:200]!r}"
    )


def _transaction_control(context: Any) -> bool:
    """Whether the statement is SQLAlchemy's own SAVEPOINT / RELEASE / ROLLBACK TO.

    They read and write no data, and refusing them would keep a session from ending.
    """
    compiled = context.compiled
    return compiled is not None and isinstance(
        compiled.statement, (SavepointClause, RollbackToSavepointClause, ReleaseSavepointClause)
    )


# They run just before the DBAPI call, inside SQLAlchemy's error handling (so the transaction
# stays usable after a refusal); returning None lets the dialect execute as usual.


def _guard_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
    _check(statement, context)


def _guard_execute_no_params(cursor: Any, statement: str, context: Any) -> None:
    _check(statement, context)


_HOOKS = (
    ("do_execute", _guard_execute),
    ("do_execute_no_params", _guard_execute_no_params),
    ("do_executemany", _guard_execute),
)


def ensure_guard(engine: Engine) -> None:
    """Register the guard on ``engine``'s dialect, once.

    The hooks live on the dialect, which an engine shares with its option engines
    (``engine.execution_options(...)``); a marker in the engine's ``__dict__`` makes every
    later call one dictionary lookup.
    """
    if engine.__dict__.get(_GUARDED):
        return
    for name, fn in _HOOKS:
        # insert=True: before any hook that executes the statement itself
        listen_once(engine.dialect, name, fn, insert=True)
    engine.__dict__[_GUARDED] = True
