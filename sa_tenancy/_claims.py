"""Claims: the open sessions using a pooled DBAPI connection, and their tenant (private).

A tenant is applied to a *connection*, and one DBAPI connection can be reached by several
sessions at once: sessions bound to one ``Connection`` (the "join an external transaction" test
fixture), or a ``StaticPool``. Whatever one of them applies, the others see. So each session
transaction that applies a tenant *claims* the DBAPI connection, in the pool entry's ``info``
(which lives as long as the DBAPI connection): the claim names the tenant and the open session
transactions relying on it. Another tenant's session (or one without a tenant) is refused while
the claim has live holders; sessions of the same tenant share it.

The same module keeps a session's own bookkeeping (:class:`State`, a private attribute of the
session, never in ``session.info``) and the checks that refuse a tenant change while a session
still holds the old tenant (:func:`check_switch`, :func:`check_current`).

Holders are held weakly: a session dropped without being closed must not keep its transaction,
its ``Connection`` or its pool slot alive through the claim.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.engine import Transaction
from sqlalchemy.orm import Session
from sqlalchemy.orm import SessionTransaction
from sqlalchemy.pool import Pool
from sqlalchemy.pool import SingletonThreadPool
from sqlalchemy.pool import StaticPool

from ._events import listen_once
from ._guard import ensure_guard
from ._keys import CLAIM
from ._keys import REFUSED_OPTION
from .exc import SchemaSwitchError
from .exc import TenancyError

__all__ = [
    "FAILED",
    "NOTHING",
    "STATE_ATTR",
    "Claim",
    "State",
    "check_current",
    "check_switch",
    "disable",
    "holds_other_tenant",
    "orphan",
    "owned",
    "same",
    "watch_sharing_pool",
]

#: Attribute of a session holding its bookkeeping (not in session.info, which users write).
STATE_ATTR = "_sa_tenancy_state"

FAILED = object()
NOTHING = object()


class Claim:
    """The open session transactions using one DBAPI connection, and the tenant they serve."""

    __slots__ = ("holders", "home", "schema", "scope")

    def __init__(self, schema: str | None, home: dict[str, Any]) -> None:
        self.schema = schema
        self.home = home  # the pool entry's info, where this claim is kept
        self.holders: list[weakref.ref[State]] = []
        # On a Connection the session does not own: the SQLAlchemy transaction (or savepoint)
        # in which the tenant was applied; the tenant lasts as long as it is active.
        self.scope: Transaction | None = None

    def in_scope(self) -> bool:
        return self.scope is None or self.scope.is_active

    def others(self, me: State | None) -> list[State]:
        """The other sessions whose transaction still uses the connection."""
        found = []
        for ref in self.holders:
            state = ref()
            if state is not None and state is not me and state.live():
                found.append(state)
        return found


class State:
    """What the current (or last) transaction of one session applied."""

    __slots__ = ("__weakref__", "held", "loaded", "raw", "ref", "schema", "session", "transaction")

    def __init__(self, session: Session) -> None:
        self.session = weakref.ref(session)
        self.transaction: SessionTransaction | None = None  # open transaction that applied
        self.raw: object = None  # the info value as given, to spot a change cheaply
        self.schema: object = None  # validated schema, None (no tenant) or FAILED
        self.loaded: object = NOTHING  # tenant whose objects the identity map may hold
        self.held: list[tuple[Connection, Claim, bool]] = []  # (connection, claim, owned)
        self.ref = weakref.ref(self)

    def live(self) -> bool:
        """Whether the transaction that applied the tenant is still the session's own.

        A session whose ``close()`` failed half-way (SQLAlchemy raises when sessions that made
        savepoints on one Connection end out of order) no longer has that transaction, although
        its end was never signalled: it must not hold the connection for ever.
        """
        if self.transaction is None:
            return False
        session = self.session()
        return session is not None and session.get_transaction() is self.transaction


def same(value: object, applied: object) -> bool:
    # Compare as plain str: an info value with a hostile __eq__ must not vouch for itself.
    return value is applied or (type(value) is str and value == applied)


def owned(transaction: SessionTransaction, connection: Connection) -> bool:
    """Whether the session made ``connection`` (and closes it with the transaction)."""
    entry = transaction._connections.get(connection)
    return bool(entry is not None and entry[3])


def disable(connection: Connection, others: list[State], why: str) -> None:
    """Make ``connection`` unusable for the refused session, sparing the other sessions."""
    if not others:
        connection.invalidate()  # nothing applied: no statement may run on it
        return
    if any(c is connection for other in others for c, _, _ in other.held):
        return  # the very same Connection object serves the other session: leave it be
    connection.execution_options(**{REFUSED_OPTION: why})
    ensure_guard(connection.engine)


def orphan(others: list[State], claim: Claim, why: str) -> None:
    """Refuse every statement of sessions whose tenant transaction ended under them."""
    for other in others:
        for connection, held_claim, _ in other.held:
            if held_claim is claim and not connection.closed:
                connection.execution_options(
                    **{REFUSED_OPTION: f"{why}; roll back or close this session"}
                )
                ensure_guard(connection.engine)


# Pools that hand one DBAPI connection to several checkouts at once: returning any of them
# resets (rolls back) the connection under the others.
_SHARING_POOLS = (StaticPool, SingletonThreadPool)
_watched: weakref.WeakSet[Pool] = weakref.WeakSet()


def watch_sharing_pool(pool: Pool) -> None:
    """On a pool that shares DBAPI connections, refuse sessions whose transaction a reset ended.

    With a ``StaticPool``, any ``Connection`` going back to the pool (a refused session's, plain
    code's) rolls the shared DBAPI connection back; a tenant session still open on it would then
    begin a new transaction, without its tenant, at its next statement. The pool's ``reset``
    event marks such sessions' ``Connection`` objects refused instead.
    """
    if not isinstance(pool, _SHARING_POOLS) or pool in _watched:
        return
    listen_once(pool, "reset", _on_reset)
    _watched.add(pool)


def _on_reset(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
    claim: Claim | None = record.info.get(CLAIM)
    if claim is not None:
        others = claim.others(None)
        if others:
            orphan(
                others,
                claim,
                "another user of this shared database connection (StaticPool) "
                "returned it to the pool, which rolled the transaction back",
            )


# -- a session's tenant may change only while it holds nothing of the old one -------------------


def holds_other_tenant(session: Session, state: State | None, tenant: object) -> bool:
    """Whether the identity map holds objects loaded for another tenant than ``tenant``."""
    return (
        state is not None
        and state.loaded is not NOTHING
        and not same(tenant, state.loaded)
        and len(session.identity_map) > 0
    )


def check_switch(session: Session, info: Any, new: object, key: str) -> None:
    """Refuse a change of ``session.info[key]`` while the session holds the old tenant.

    Called by the guarded ``info`` dict before the write: in a transaction that applied a
    tenant, with objects loaded for another tenant (``session.get()`` would answer from the
    identity map with no SQL), or with pending objects added for the current one.
    """
    current = None if info is None else info.get(key)
    if same(new, current):
        return
    state: State | None = session.__dict__.get(STATE_ATTR)
    if state is not None and state.transaction is not None:
        raise SchemaSwitchError(
            f"session.info[{key!r}] cannot change from {current!r} to {new!r} in "
            f"the middle of a transaction that serves {state.schema!r}; commit or roll back "
            "first, then close the session (better: one session per tenant)"
        )
    if holds_other_tenant(session, state, new):
        assert state is not None
        raise SchemaSwitchError(
            f"session.info[{key!r}] cannot change to {new!r} while the identity "
            f"map holds {len(session.identity_map)} object(s) loaded for {state.loaded!r} "
            "(session.get() would return them with no SQL); call session.close() or "
            "session.expunge_all() first (better: one session per tenant)"
        )
    if current is not None and (session.new or session.deleted):
        raise SchemaSwitchError(
            f"session.info[{key!r}] cannot change from {current!r} to {new!r} "
            "while the session holds pending objects added for it; flush or expunge them "
            "first (better: one session per tenant)"
        )


def check_current(session: Session, key: str) -> None:
    """At each execute and flush: the transaction's begin succeeded and its tenant stands."""
    state: State | None = session.__dict__.get(STATE_ATTR)
    if state is None or state.transaction is None:
        return  # no transaction begun yet: after_begin will apply the current tenant
    if state.transaction is not session.get_transaction():
        return
    if state.schema is FAILED:
        raise TenancyError(
            "this transaction could not apply its tenant (see the earlier error); "
            "call session.rollback() or session.close() before using the session again"
        )
    info = session.__dict__.get("info")
    current = None if info is None else info.get(key)
    if not same(current, state.raw) and not same(current, state.schema):
        raise SchemaSwitchError(
            f"session.info[{key!r}] changed to {current!r} in the middle of a "
            f"transaction that serves {state.schema!r}; commit or roll back first, then "
            "close the session (better: one session per tenant)"
        )
