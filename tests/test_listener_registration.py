"""sa_tenancy's lazily registered listeners reach every new pool and dialect.

The SQLite checkin cleanup, the tenant limit, the ``StaticPool`` reset watch and the statement
guard are registered on the first pool or dialect that needs them. SQLAlchemy's event registry
(``event.contains``) is keyed by ``id(target)`` and can keep a collected target's entry; a new
object made at that address is then reported as listening when it is not. These tests make
exactly that object, a pool where a collected one stood while the registry still holds the
collected one's entry, and check that every pool-level guard still holds on it. (A dialect
cannot be placed at a given address as reliably: it lives in a reference cycle; the last test
shows that no registration, the dialect-level guard's included, asks the registry.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from typing import TypeVar

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import QueuePool
from sqlalchemy.pool import StaticPool

import sa_tenancy
from sa_tenancy import SchemaSwitchError
from sa_tenancy import _claims
from sa_tenancy import _events
from sa_tenancy import sqlite as sa_sqlite

from .models import Note
from .models import tenant_metadata

T = TypeVar("T")


def connector(conninfo: str) -> Callable[[], Any]:
    """A pool's creator: a new psycopg connection to ``conninfo``."""
    return lambda: psycopg.connect(conninfo)


def reborn(make: Callable[[], T], stale: Callable[[T], None]) -> tuple[T, list[object]]:
    """A new ``make()`` object at the address of a collected one whose registry entry lives on.

    ``stale`` registers a listener on the first object; its dispatch is kept referenced (as a
    reference cycle keeps it in a real program) while the object itself is freed, and the next
    object of the same type is allocated in its place. The kept objects are returned so that
    they stay alive as long as the test needs the entry.
    """
    kept: list[object] = []
    for _ in range(100):
        old = make()
        stale(old)
        address = id(old)
        kept.append(old.dispatch)  # type: ignore[attr-defined]
        del old
        new = make()
        if id(new) == address:
            return new, kept
        kept.append(new)
    pytest.fail("no object was allocated at a collected one's address in 100 tries")


def test_the_registry_misreports_a_reborn_pool_and_sa_tenancy_does_not_ask_it(tmp_path):
    def creator() -> Any:  # a DBAPI connection
        return sqlite3.connect(tmp_path / "x.db")

    def stale(pool: QueuePool) -> None:
        event.listen(pool, "checkin", sa_sqlite._on_checkin)

    pool, _kept = reborn(lambda: QueuePool(creator), stale)
    # The precondition: SQLAlchemy's registry says "listening", the pool's own dispatch not.
    assert event.contains(pool, "checkin", sa_sqlite._on_checkin)
    assert not _events.listens(pool, "checkin", sa_sqlite._on_checkin)
    _events.listen_once(pool, "checkin", sa_sqlite._on_checkin)
    assert list(pool.dispatch.checkin) == [sa_sqlite._on_checkin]
    _events.listen_once(pool, "checkin", sa_sqlite._on_checkin)  # once only
    assert list(pool.dispatch.checkin) == [sa_sqlite._on_checkin]
    _events.remove(pool, "checkin", sa_sqlite._on_checkin)
    _events.remove(pool, "checkin", sa_sqlite._on_checkin)  # idempotent
    assert list(pool.dispatch.checkin) == []


def test_sqlite_files_detached_on_a_reborn_pool(tmp_path: Path):
    main = tmp_path / "app.db"
    setup = create_engine(f"sqlite:///{main}")
    sa_tenancy.create_tenant(setup, "acme", metadata=tenant_metadata)
    setup.dispose()

    def creator() -> Any:  # a DBAPI connection
        return sqlite3.connect(main, check_same_thread=False)

    def stale(pool: QueuePool) -> None:
        event.listen(pool, "checkin", sa_sqlite._on_checkin)

    pool, _kept = reborn(lambda: QueuePool(creator, pool_size=1, max_overflow=0), stale)
    assert event.contains(pool, "checkin", sa_sqlite._on_checkin)  # the trap is set
    engine = create_engine(f"sqlite:///{main}", pool=pool)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy="auto")
    with factory(info={"schema": "acme"}) as session:
        session.execute(insert(Note).values(id=1, body="acme"))
        session.commit()
    with engine.connect() as conn:  # the same DBAPI connection (pool_size=1)
        names = [row[1] for row in conn.exec_driver_sql("PRAGMA database_list")]
        assert "acme" not in names
    engine.dispose()


def test_tenant_limit_on_a_reborn_pool(pg_url, pg_tenants):
    tenants = pg_tenants(tenant_metadata, 2)
    url = make_url(pg_url).set(drivername="postgresql")
    conninfo = url.render_as_string(hide_password=False)
    factory = sessionmaker()
    installation = sa_tenancy.install(factory, max_tenants_per_connection=1)
    limit = installation._limit
    assert limit is not None

    def stale(pool: QueuePool) -> None:
        event.listen(pool, "checkin", limit._on_checkin)

    pool, _kept = reborn(
        lambda: QueuePool(connector(conninfo), pool_size=1, max_overflow=0),
        stale,
    )
    assert event.contains(pool, "checkin", limit._on_checkin)
    engine = create_engine(pg_url, pool=pool)
    factory.configure(bind=engine)
    pid = text("SELECT pg_backend_pid()").execution_options(sa_tenancy_allow_raw_sql=True)
    backends = []
    for tenant in tenants:
        with factory(info={"schema": tenant}) as session:
            session.execute(select(Note)).all()
            backends.append(session.execute(pid).scalar())
    assert backends[0] != backends[1]  # one tenant per connection: replaced at checkin
    engine.dispose()


def test_static_pool_reset_watch_on_a_reborn_pool(pg_url, two_tenants):
    b = two_tenants[1]
    conninfo = make_url(pg_url).set(drivername="postgresql").render_as_string(False)

    def stale(pool: StaticPool) -> None:
        event.listen(pool, "reset", _claims._on_reset)

    pool, _kept = reborn(lambda: StaticPool(connector(conninfo)), stale)
    assert event.contains(pool, "reset", _claims._on_reset)
    engine = create_engine(pg_url, pool=pool)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory)
    with factory(info={"schema": b}) as session:
        assert session.scalars(select(Note.body)).all() == []
        with engine.connect() as plain:  # its close resets (rolls back) the shared connection
            plain.exec_driver_sql("SELECT 1")
        with pytest.raises(SchemaSwitchError, match="rolled the transaction back"):
            session.scalars(select(Note.body)).all()  # would begin anew, without the tenant
    engine.dispose()


def test_no_module_asks_the_id_keyed_registry():
    """The class of bug, not one instance: the package never decides by ``event.contains``."""
    package = Path(sa_tenancy.__file__).parent
    callers = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if "event.contains(" in path.read_text(encoding="utf-8")
    ]
    assert callers == []
