"""install(), uninstall() and the per-transaction listener against real PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.exc import PendingRollbackError
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import InvalidSchemaName
from sa_tenancy import SchemaRequired
from sa_tenancy import SchemaSwitchError
from sa_tenancy import TenancyError
from sa_tenancy.testing import DECOY

from .models import Author
from .models import Book
from .models import Note


def seed(factory, schema, *objects):
    with factory(info={"schema": schema}) as session:
        session.add_all(objects)
        session.commit()


def bodies(factory, schema):
    with factory(info={"schema": schema}) as session:
        return sorted(session.scalars(select(Note.body)))


# -- invariant 1: isolation --------------------------------------------------------------------


def test_isolation_same_primary_keys(SessionLocal, two_tenants):
    a, b = two_tenants
    seed(SessionLocal, a, Note(id=1, body=f"{a}-1"), Note(id=2, body=f"{a}-2"))
    seed(SessionLocal, b, Note(id=1, body=f"{b}-1"))
    assert bodies(SessionLocal, a) == [f"{a}-1", f"{a}-2"]
    assert bodies(SessionLocal, b) == [f"{b}-1"]
    with SessionLocal(info={"schema": b}) as session:
        assert session.get(Note, 2) is None
        assert session.get(Note, 1).body == f"{b}-1"


def test_isolation_across_commit_rollback_and_savepoint(SessionLocal, two_tenants):
    a, b = two_tenants
    with SessionLocal(info={"schema": a}) as session:
        session.add(Note(id=1, body="a-committed"))
        session.commit()
        session.add(Note(id=2, body="a-rolled-back"))
        session.flush()
        session.rollback()
        with session.begin_nested():
            session.add(Note(id=3, body="a-savepoint"))
        nested = session.begin_nested()
        session.add(Note(id=4, body="a-savepoint-rolled-back"))
        session.flush()
        nested.rollback()
        session.commit()
    assert bodies(SessionLocal, a) == ["a-committed", "a-savepoint"]
    assert bodies(SessionLocal, b) == []


def test_relationships_lazy_loads_cascades_and_refresh(SessionLocal, two_tenants):
    a, b = two_tenants
    seed(SessionLocal, a, Author(id=1, name="a-author", books=[Book(id=1, title="a-book")]))
    seed(SessionLocal, b, Author(id=1, name="b-author", books=[Book(id=1, title="b-book")]))
    with SessionLocal(info={"schema": b}) as session:
        author = session.get(Author, 1)
        assert [book.title for book in author.books] == ["b-book"]  # lazy load
        author.name = "b-renamed"
        session.commit()
        assert author.name == "b-renamed"  # refresh after commit (expired attributes)
        session.delete(author)  # cascade delete of the book
        session.commit()
    with SessionLocal(info={"schema": a}) as session:
        assert session.get(Author, 1).name == "a-author"
        assert session.scalars(select(Book.title)).all() == ["a-book"]


def test_threads_alternating_tenants_see_only_their_rows(pg_url, two_tenants, strategy):
    engine = create_engine(pg_url, pool_size=3, max_overflow=0)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=strategy)
    a, b = two_tenants
    seed(factory, a, *[Note(id=i, body=a) for i in range(1, 6)])
    seed(factory, b, *[Note(id=i, body=b) for i in range(1, 6)])
    wrong: list[str] = []

    def work(offset: int) -> None:
        for i in range(60):
            schema = (a, b)[(i + offset) % 2]
            with factory(info={"schema": schema}) as session:
                seen = set(session.scalars(select(Note.body)))
                if seen != {schema}:
                    wrong.append(f"{schema} saw {seen}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    assert wrong == []


# -- invariant 3: fail closed -----------------------------------------------------------------


def test_no_tenant_without_require_is_a_plain_session(SessionLocal, two_tenants):
    with SessionLocal() as session:
        assert session.scalars(select(Note.body)).all() == [DECOY]


def test_require_refuses_a_session_without_tenant(pg_engine, two_tenants, strategy, statements):
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy=strategy, require=True)
    with factory() as session:
        with pytest.raises(SchemaRequired, match="info="):
            session.scalars(select(Note)).all()
        # The failed transaction is unusable, ORM and Core alike, until rolled back.
        with pytest.raises(TenancyError):
            session.scalars(select(Note)).all()
        with pytest.raises(PendingRollbackError):
            session.connection().execute(select(Note.body)).all()
        session.rollback()
        session.info["schema"] = two_tenants[0]
        assert session.scalars(select(Note)).all() == []
    assert not statements.contains(DECOY)
    with factory(info={"schema": None}) as session, pytest.raises(SchemaRequired):
        session.execute(select(Note))


@pytest.mark.parametrize(
    "name",
    [
        'x"; DROP SCHEMA public CASCADE; --',
        "x' OR '1'='1",
        "a" * 64,
        "é" * 40,
        "x\x00y",
        "pg_catalog",
        "information_schema",
        "public",
        b"tenant",
        42,
    ],
)
def test_hostile_names_never_reach_the_server(SessionLocal, two_tenants, statements, name):
    with SessionLocal(info={"schema": name}) as session:
        with pytest.raises(InvalidSchemaName):
            session.execute(select(Note)).all()
    needle = name if isinstance(name, str) else repr(name)
    assert not statements.contains(needle[:20])


def test_switch_with_objects_in_identity_map_is_refused(SessionLocal, two_tenants):
    a, b = two_tenants
    seed(SessionLocal, a, Note(id=1, body="a"))
    seed(SessionLocal, b, Note(id=1, body="b"))
    with SessionLocal(info={"schema": a}) as session:
        note = session.get(Note, 1)
        session.commit()  # expires note; a refresh under b would load b's row into it
        with pytest.raises(SchemaSwitchError, match="identity map"):
            session.info["schema"] = b  # refused when it is written, before any use
        assert session.info["schema"] == a
        assert note.body == "a"
        session.rollback()
        session.expunge_all()
        session.info["schema"] = b
        assert session.get(Note, 1).body == "b"  # empty identity map: switch allowed
        session.close()
        session.info["schema"] = a
        assert session.get(Note, 1).body == "a"  # after close(): allowed


def test_switch_in_the_middle_of_a_transaction_is_refused(SessionLocal, two_tenants):
    a, b = two_tenants
    with SessionLocal(info={"schema": a}) as session:
        session.execute(select(Note)).all()
        with pytest.raises(SchemaSwitchError, match="middle of a transaction"):
            session.info["schema"] = b
        # A write that bypasses the guarded dict is still caught at the next statement.
        dict.__setitem__(session.info, "schema", b)
        with pytest.raises(SchemaSwitchError, match="middle of a transaction"):
            session.execute(select(Note)).all()
        with pytest.raises(SchemaSwitchError):
            session.get(Note, 99)
        session.add(Note(id=5, body="where?"))
        with pytest.raises(SchemaSwitchError):
            session.flush()
        session.rollback()
        session.expunge_all()
    assert bodies(SessionLocal, a) == [] and bodies(SessionLocal, b) == []


def times_applied(statements):
    """How many statements set the search path: set_config() or, with psycopg, SET LOCAL."""
    return statements.count("set_config('search_path'") + statements.count("SET LOCAL search_path")


def test_savepoints_do_not_reapply(pg_engine, two_tenants, statements):
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path")
    with factory(info={"schema": two_tenants[0]}) as session:
        session.execute(select(Note)).all()
        with session.begin_nested():
            session.add(Note(id=1, body="x"))
        with session.begin_nested():
            session.execute(select(Note)).all()
        session.commit()
    assert times_applied(statements) == 1


# -- invariant 4: scoped install ---------------------------------------------------------------


def test_install_affects_only_its_target(pg_engine, two_tenants, strategy):
    tenant_factory = sessionmaker(pg_engine)
    plain_factory = sessionmaker(pg_engine)
    sa_tenancy.install(tenant_factory, strategy=strategy)
    seed(tenant_factory, two_tenants[0], Note(id=7, body="tenant"))
    with plain_factory(info={"schema": two_tenants[0]}) as session:
        assert session.scalars(select(Note.body)).all() == [DECOY]
    with Session(pg_engine, info={"schema": two_tenants[0]}) as session:
        assert session.scalars(select(Note.body)).all() == [DECOY]


def test_uninstall_restores_plain_behaviour(pg_engine, two_tenants, strategy):
    factory = sessionmaker(pg_engine)
    installation = sa_tenancy.install(factory, strategy=strategy)
    assert sa_tenancy.installation_of(factory) is installation and installation.installed
    assert sa_tenancy.uninstall(factory) is True
    assert sa_tenancy.uninstall(factory) is False
    assert not installation.installed
    with factory(info={"schema": two_tenants[0]}) as session:
        assert session.scalars(select(Note.body)).all() == [DECOY]
    again = sa_tenancy.install(factory, strategy=strategy)  # installable again
    with factory(info={"schema": two_tenants[0]}) as session:
        assert session.scalars(select(Note.body)).all() == []
    again.uninstall()


def test_installing_twice_is_refused_and_applies_once(pg_engine, two_tenants, statements):
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory)
    with pytest.raises(TenancyError, match="already installed"):
        sa_tenancy.install(factory)
    with pytest.raises(TenancyError, match="already installed"):
        sa_tenancy.install(scoped_session(factory))
    with factory(info={"schema": two_tenants[0]}) as session:
        session.execute(select(Note)).all()
    assert times_applied(statements) == 1


def test_session_subclasses_and_scoped_sessions(pg_engine, two_tenants):
    class TenantSession(Session):
        pass

    installation = sa_tenancy.install(TenantSession)
    seed(sessionmaker(pg_engine, class_=TenantSession), two_tenants[0], Note(id=1, body="sub"))
    # A sessionmaker built on an installed class inherits it; installing again is refused.
    with pytest.raises(TenancyError, match="already installed"):
        sa_tenancy.install(sessionmaker(pg_engine, class_=TenantSession))
    installation.uninstall()

    registry = scoped_session(sessionmaker(pg_engine))
    sa_tenancy.install(registry, strategy="translate_map")
    session = registry(info={"schema": two_tenants[0]})
    assert session.scalars(select(Note.body)).all() == ["sub"]
    registry.remove()
    sa_tenancy.uninstall(registry)


def test_global_session_and_bad_targets_are_refused():
    with pytest.raises(TenancyError, match="every session"):
        sa_tenancy.install(Session)
    with pytest.raises(TenancyError, match="cannot install"):
        sa_tenancy.install(object())
    with pytest.raises(TenancyError, match="unknown strategy"):
        sa_tenancy.install(sessionmaker(), strategy="schema_per_request")
    with pytest.raises(TenancyError, match="search_path strategy only"):
        sa_tenancy.install(sessionmaker(), strategy="translate_map", extra_schemas=["public"])


def test_custom_info_key_and_name_policy(pg_engine, pg_tenants, strategy):
    from .models import tenant_metadata

    (upper,) = pg_tenants(tenant_metadata, names=["Acme-Corp"])
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy=strategy, info_key="tenant", names=r"[A-Za-z-]+")
    seed_factory = factory
    with seed_factory(info={"tenant": upper}) as session:
        session.add(Note(id=1, body="upper"))
        session.commit()
    with pg_engine.connect() as conn:
        assert conn.execute(text('SELECT body FROM "Acme-Corp".notes')).scalar() == "upper"
    with factory(info={"schema": upper}) as session:  # the default key is not read
        assert session.scalars(select(Note.body)).all() == [DECOY]


class CountingStrategy:
    """A third-party strategy: translate map plus a count of applications."""

    def __init__(self):
        self.applied: list[str | None] = []

    def apply(self, connection, schema):
        self.applied.append(schema)
        if schema is not None:
            connection.execution_options(schema_translate_map={None: schema})


def test_third_party_strategy(pg_engine, two_tenants):
    strategy = CountingStrategy()
    assert isinstance(strategy, sa_tenancy.Strategy)
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy=strategy)
    seed(factory, two_tenants[1], Note(id=1, body="custom"))
    assert bodies(factory, two_tenants[1]) == ["custom"]
    assert bodies(factory, two_tenants[0]) == []
    assert strategy.applied == [two_tenants[1], two_tenants[1], two_tenants[0]]
    with pytest.raises(TenancyError, match="not a Strategy"):
        sa_tenancy.install(sessionmaker(), strategy=object())  # type: ignore[arg-type]


def test_a_failed_strategy_leaves_no_usable_untenanted_connection(pg_url, two_tenants):
    """After the strategy fails, Core statements on the session's connection cannot run
    against the default schema either: the connection is invalidated (AUTOCOMMIT), or its
    search_path names only the unknown tenant."""
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy="search_path")
    with factory(info={"schema": two_tenants[0]}) as session:
        with pytest.raises(TenancyError, match="AUTOCOMMIT"):
            session.execute(select(Note))
        with pytest.raises(PendingRollbackError):
            session.connection().execute(select(Note.body)).all()
    engine.dispose()


def test_unknown_schema_keeps_the_connection_but_reaches_no_table(pg_engine, two_tenants):
    from sqlalchemy.exc import ProgrammingError

    from sa_tenancy.testing import unique_name

    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path")
    with factory(info={"schema": unique_name("missing")}) as session:
        with pytest.raises(sa_tenancy.UnknownSchema):
            session.execute(select(Note))
        with pytest.raises(ProgrammingError, match="does not exist"):
            session.connection().execute(select(Note.body)).all()
    with pg_engine.connect() as conn:  # not invalidated: the same pooled connection, clean
        assert conn.execute(text("SHOW search_path")).scalar() == '"$user", public'
