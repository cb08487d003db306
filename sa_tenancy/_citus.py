"""What the lifecycle needs to know about Citus, and the one setting it changes (private).

Citus schema-based sharding distributes a schema when it is created while
``citus.enable_schema_based_sharding`` is on. sa_tenancy turns it on, for its own
``CREATE SCHEMA`` of a tenant only, with a transaction-scoped ``set_config`` (``SET LOCAL``), and
off for its own shared schemas (the ledger, :func:`sa_tenancy.create_shared_tables`), so that
the ledger stays a plain table on the coordinator, where its advisory locks and ``SKIP LOCKED``
claims are. The previous value is put back right after the ``CREATE SCHEMA``.

On plain PostgreSQL the same call defines a *placeholder* setting (any dotted name is accepted
while no loaded library reserves its prefix): it does nothing, costs one round trip per schema
creation (never per transaction of the application) and ends with the transaction. So the
library's SQL is the same on both, and nothing needs to know which server it talks to.

Where behaviour must differ (reference tables, moving tenants, refusing a worker node),
:func:`server_of` asks the server once per engine and remembers the answer on the engine
itself (a ``WeakKeyDictionary`` keyed by the engine object, never by ``id()``: a new engine made
at a collected one's address must not inherit its answer).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine

from .exc import TenancyError

__all__ = ["Server", "refuse_worker", "server_of", "sharding"]

SHARDING_SETTING = "citus.enable_schema_based_sharding"

#: Set the sharding setting for this transaction; the previous value comes back first. The
#: ``OFFSET 0`` subquery is evaluated before the ``set_config`` of the outer select list.
_SWAP = text(
    "SELECT prev, set_config(:name, :value, true) FROM "
    "(SELECT current_setting(:name, true) AS prev OFFSET 0) AS s"
)
_RESTORE = text("SELECT set_config(:name, :value, true)")


@contextmanager
def sharding(conn: Connection, on: bool) -> Iterator[None]:
    """Run the body (one ``CREATE SCHEMA``) with schema-based sharding ``on`` or off.

    Transaction-scoped like ``SET LOCAL``; the caller's value is restored afterwards (on plain
    PostgreSQL the placeholder simply ends with the transaction).
    """
    prev = conn.execute(_SWAP, {"name": SHARDING_SETTING, "value": "on" if on else "off"}).scalar()
    yield
    if prev is not None and prev != ("on" if on else "off"):
        conn.execute(_RESTORE, {"name": SHARDING_SETTING, "value": prev})


@dataclass(frozen=True)
class Server:
    """What an engine's database is: plain PostgreSQL, a Citus coordinator or a Citus worker."""

    citus: bool
    coordinator: bool
    version: str | None = None


_SERVERS: weakref.WeakKeyDictionary[Engine, Server] = weakref.WeakKeyDictionary()

_DETECT = text("SELECT extversion FROM pg_extension WHERE extname = 'citus'")


def server_of(bind: Engine | Connection) -> Server:
    """Whether ``bind``'s database has the citus extension, asked once per engine."""
    engine = bind.engine
    known = _SERVERS.get(engine)
    if known is not None:
        return known
    if isinstance(bind, Connection):
        found = _detect(bind)
    else:
        with bind.connect() as conn:
            found = _detect(conn)
    _SERVERS[engine] = found
    return found


def _detect(conn: Connection) -> Server:
    if conn.dialect.name != "postgresql":
        return Server(citus=False, coordinator=True)
    version = conn.execute(_DETECT).scalar()
    if version is None:
        return Server(citus=False, coordinator=True)
    coordinator = bool(conn.execute(text("SELECT citus_is_coordinator()")).scalar())
    return Server(citus=True, coordinator=coordinator, version=str(version))


def refuse_worker(bind: Engine | Connection, what: str) -> None:
    """Refuse to run a fleet operation on a Citus worker node.

    The ledger and the advisory locks that keep two deployers apart live on the coordinator; a
    deployer connected to a worker would see neither.
    """
    if bind.engine.dialect.name != "postgresql":
        return
    server = server_of(bind)
    if server.citus and not server.coordinator:
        raise TenancyError(
            f"{what} must run against the Citus coordinator, not a worker node: the version "
            "ledger and the per-tenant locks live on the coordinator; point the URL at it"
        )
