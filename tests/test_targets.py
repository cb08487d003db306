"""``install()`` affects only the sessions its target makes, whatever session class it was given.

The reported case: ``install(sessionmaker(engine, class_=sqlmodel.Session))`` in an app that also
makes plain ``sqlmodel.Session(engine)`` sessions. Each test makes such plain sessions beside the
installed factory, with ``require=True`` so that any session the installation reaches by mistake
fails with ``SchemaRequired`` instead of quietly reading the default schema.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import TenancyError
from sa_tenancy.testing import DECOY
from sa_tenancy.testing import url_for_driver

from .models import Note

pytest.importorskip("sqlmodel", reason="needs sqlmodel (the test extra)")

import sqlmodel
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession


def seed(factory, schema, body):
    with factory(info={"schema": schema}) as session:
        session.add(Note(id=1, body=body))
        session.commit()


def plain_bodies(session: Session) -> list[str]:
    with session:
        return list(session.scalars(select(Note.body)))


def test_plain_sqlmodel_session_beside_an_installed_factory(pg_engine, two_tenants, strategy):
    a, _ = two_tenants
    SessionLocal = sessionmaker(pg_engine, class_=sqlmodel.Session)
    installation = sa_tenancy.install(SessionLocal, strategy=strategy, require=True)
    seed(SessionLocal, a, "tenant a")
    with SessionLocal(info={"schema": a}) as session:
        assert isinstance(session, sqlmodel.Session)
        assert session.scalars(select(Note.body)).all() == ["tenant a"]
        assert session.exec(sqlmodel.select(Note.body)).all() == ["tenant a"]  # SQLModel's API
    # A plain SQLModel session, another factory on the same class, and a session of the class
    # the factory was built on: no tenant applied, no SchemaRequired, the default schema.
    assert plain_bodies(sqlmodel.Session(pg_engine)) == [DECOY]
    assert plain_bodies(sessionmaker(pg_engine, class_=sqlmodel.Session)()) == [DECOY]
    shared = sessionmaker(pg_engine)
    shared.class_ = SessionLocal.class_  # a factory reusing the class it read from ours
    installation.uninstall()
    shared.class_ = SessionLocal.class_
    installation = sa_tenancy.install(SessionLocal, strategy=strategy, require=True)
    assert plain_bodies(shared()) == [DECOY]
    with SessionLocal(info={"schema": a}) as session:
        assert session.scalars(select(Note.body)).all() == ["tenant a"]
    installation.uninstall()
    assert SessionLocal.class_ is shared.class_  # uninstall gives the factory its class back
    assert plain_bodies(SessionLocal()) == [DECOY]


def test_plain_sqlmodel_async_session_beside_an_installed_factory(pg_url, pg_engine, two_tenants):
    pytest.importorskip("greenlet", reason="needs sa_tenancy[asyncio]")
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.ext.asyncio import create_async_engine

    a, _ = two_tenants

    async def main():
        engine = create_async_engine(url_for_driver(pg_url, "psycopg"))
        factory = async_sessionmaker(engine, class_=SQLModelAsyncSession)
        installation = sa_tenancy.install(factory, require=True)
        bodies = sqlmodel.select(Note.body)  # SQLModel's AsyncSession deprecates scalars()
        async with factory(info={"schema": a}) as session:
            assert (await session.exec(bodies)).all() == []
        async with SQLModelAsyncSession(engine) as session:
            assert (await session.exec(bodies)).all() == [DECOY]
        assert plain_bodies(sqlmodel.Session(pg_engine)) == [DECOY]  # its sync_session_class
        installation.uninstall()
        await engine.dispose()

    asyncio.run(main())


def test_scoped_session_of_a_class_gets_a_private_class(pg_engine, two_tenants, strategy):
    a, _ = two_tenants
    registry: scoped_session[sqlmodel.Session] = scoped_session(sqlmodel.Session)  # type: ignore[arg-type]
    installation = sa_tenancy.install(registry, strategy=strategy, require=True)
    seed(sessionmaker(pg_engine, class_=registry.session_factory), a, "scoped a")
    session = registry(bind=pg_engine, info={"schema": a})
    assert isinstance(session, sqlmodel.Session) and type(session) is not sqlmodel.Session
    assert session.scalars(select(Note.body)).all() == ["scoped a"]
    registry.remove()
    assert plain_bodies(sqlmodel.Session(pg_engine)) == [DECOY]
    installation.uninstall()
    assert registry.session_factory is sqlmodel.Session
    assert registry.registry.createfunc is sqlmodel.Session


@pytest.mark.parametrize(
    "shared",
    [Session, sqlmodel.Session, SQLModelAsyncSession],
    ids=["sqlalchemy", "sqlmodel", "sqlmodel-async"],
)
def test_library_session_classes_are_refused(shared):
    with pytest.raises(TenancyError, match="every (async )?session of that class") as caught:
        sa_tenancy.install(shared)
    assert "Install on your factory" in str(caught.value)


def test_flask_sqlalchemy_session_class_is_refused():
    fsa_session = pytest.importorskip("flask_sqlalchemy.session", reason="needs sa_tenancy[flask]")
    with pytest.raises(TenancyError, match="every session of that class"):
        sa_tenancy.install(fsa_session.Session)


def test_own_subclass_of_a_library_class_is_accepted(pg_engine, two_tenants):
    a, _ = two_tenants

    class TenantSession(sqlmodel.Session):
        pass

    installation = sa_tenancy.install(TenantSession, require=True)
    with TenantSession(pg_engine, info={"schema": a}) as session:
        assert session.scalars(select(Note.body)).all() == []
    assert plain_bodies(sqlmodel.Session(pg_engine)) == [DECOY]
    installation.uninstall()
