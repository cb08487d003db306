"""FastAPI integration through Starlette's request path, real PostgreSQL, both strategies."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime,
# and the Annotated dependency aliases below are local to the function that builds the app.

import asyncio
from typing import Annotated
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import TenancyError
from sa_tenancy.testing import unique_name
from sa_tenancy.testing import url_for_driver

from .models import Note
from .models import tenant_metadata

pytest.importorskip("fastapi", reason="needs sa_tenancy[fastapi]")
pytest.importorskip("httpx", reason="the test client needs httpx (sa_tenancy[test])")

from fastapi import Depends
from fastapi import FastAPI
from fastapi import HTTPException
from fastapi.testclient import TestClient

from sa_tenancy.integrations import path_param
from sa_tenancy.integrations import subdomain
from sa_tenancy.integrations.fastapi import async_session_dependency
from sa_tenancy.integrations.fastapi import session_dependency

HOSTILE = ['a"; DROP SCHEMA public CASCADE; --', "x" * 64, "public", "pg_catalog", "Acme", " "]


def make_app(factory, **options):
    app = FastAPI()
    TenantSession = Annotated[Session, Depends(session_dependency(factory, **options))]

    @app.post("/notes", status_code=201)
    def create(payload: dict, session: TenantSession):
        note = Note(body=payload["body"])
        session.add(note)
        session.commit()
        return {"id": note.id, "body": note.body}

    @app.get("/notes")
    def list_notes(session: TenantSession):
        return [
            {"id": n.id, "body": n.body} for n in session.scalars(select(Note).order_by(Note.id))
        ]

    @app.post("/explode")
    def explode(payload: dict, session: TenantSession):
        session.add(Note(body=payload["body"]))
        session.flush()  # the row is in the transaction...
        raise RuntimeError("handler failed")  # ...which must be rolled back

    @app.get("/missing")
    def missing(session: TenantSession):
        raise HTTPException(status_code=404, detail="no such note")

    @app.get("/{tenant}/notes")
    def by_path(session: TenantSession):
        return [n.body for n in session.scalars(select(Note))]

    return app


@pytest.fixture
def client(SessionLocal):
    with TestClient(make_app(SessionLocal), raise_server_exceptions=False) as client:
        yield client


def post(client, tenant, body):
    return client.post("/notes", json={"body": body}, headers={"X-Tenant": tenant})


def get(client, tenant):
    return client.get("/notes", headers={"X-Tenant": tenant})


def test_isolation_between_tenants_with_identical_ids(client, two_tenants, pg_engine):
    a, b = two_tenants
    assert post(client, a, "from a").json() == {"id": 1, "body": "from a"}
    assert post(client, b, "from b").json() == {"id": 1, "body": "from b"}
    assert post(client, a, "again a").status_code == 201
    assert get(client, a).json() == [{"id": 1, "body": "from a"}, {"id": 2, "body": "again a"}]
    assert get(client, b).json() == [{"id": 1, "body": "from b"}]
    assert pg_engine.pool.checkedout() == 0


def test_missing_tenant_is_400(client, two_tenants, statements, pg_engine):
    response = client.get("/notes")
    assert response.status_code == 400
    assert response.json() == {"detail": "missing tenant: send the X-Tenant header"}
    assert get(client, "").status_code == 400
    assert statements.entries == []
    assert pg_engine.pool.checkedout() == 0


@pytest.mark.parametrize("name", HOSTILE)
def test_invalid_name_is_400_before_any_sql(client, statements, name):
    response = get(client, name)
    assert response.status_code == 400
    assert response.json() == {"detail": "invalid tenant name"}
    assert statements.entries == []


def test_unknown_tenant_is_404(client, two_tenants, pg_engine):
    ghost = unique_name()
    for response in (get(client, ghost), post(client, ghost, "lost")):
        assert response.status_code == 404
        assert response.json() == {"detail": f"unknown tenant {ghost!r}"}
        assert pg_engine.pool.checkedout() == 0


def test_dropped_tenant_is_404_at_once(client, pg_tenants, pg_engine):
    """No cache: the request after the DROP already gets a 404."""
    (tenant,) = pg_tenants(tenant_metadata, 1)
    assert get(client, tenant).status_code == 200
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{tenant}" CASCADE')
    assert get(client, tenant).status_code == 404


def test_tenant_missing_a_table_is_a_server_error_not_404(client, pg_tenants, pg_engine):
    """A half-migrated tenant exists: its "relation does not exist" must stay a 500."""
    (bare,) = pg_tenants(None, 1)
    response = get(client, bare)
    assert response.status_code == 500
    assert pg_engine.pool.checkedout() == 0


def test_handler_exception_rolls_back(client, two_tenants, pg_engine):
    a, _ = two_tenants
    response = client.post("/explode", json={"body": "doomed"}, headers={"X-Tenant": a})
    assert response.status_code == 500
    assert pg_engine.pool.checkedout() == 0
    assert get(client, a).json() == []


def test_handler_http_error_passes_through(client, two_tenants, pg_engine):
    response = client.get("/missing", headers={"X-Tenant": two_tenants[0]})
    assert response.status_code == 404
    assert response.json() == {"detail": "no such note"}
    assert pg_engine.pool.checkedout() == 0


def test_session_closed_after_each_request(SessionLocal, two_tenants, pg_engine):
    seen: list[Session] = []
    app = FastAPI()
    TenantSession = Annotated[Session, Depends(session_dependency(SessionLocal))]

    @app.get("/peek")
    def peek(session: TenantSession):
        seen.append(session)
        return session.scalar(select(Note.id).limit(1))

    with TestClient(app) as client:
        for tenant in two_tenants:
            assert client.get("/peek", headers={"X-Tenant": tenant}).status_code == 200
            assert pg_engine.pool.checkedout() == 0
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert all(s.get_transaction() is None for s in seen)
    assert [s.info["schema"] for s in seen] == two_tenants


def test_path_resolver(SessionLocal, two_tenants):
    a, b = two_tenants
    with TestClient(make_app(SessionLocal)) as client:
        post(client, a, "a-note")
    with TestClient(make_app(SessionLocal, resolver=path_param("tenant"))) as client:
        assert client.get(f"/{a}/notes").json() == ["a-note"]
        assert client.get(f"/{b}/notes").json() == []
        assert client.get("/notes").status_code == 400  # this route has no tenant parameter


def test_subdomain_resolver(SessionLocal, pg_tenants):
    # Tenants named like host labels (no underscores).
    a, b = pg_tenants(tenant_metadata, names=[unique_name("s").replace("_", "") for _ in "ab"])
    with TestClient(make_app(SessionLocal, resolver=subdomain("example.test"))) as client:

        def on(host, method="GET", **kw):
            return client.request(method, "/notes", headers={"Host": host}, **kw)

        assert on(f"{a}.example.test", "POST", json={"body": "a-note"}).status_code == 201
        assert on(f"{a}.Example.Test:8000").json() == [{"id": 1, "body": "a-note"}]
        assert on(f"{b}.example.test").json() == []
        assert on("example.test").status_code == 400
        assert on(f"{a}.evil.test").status_code == 400
        assert on(f"x.{a}.example.test").status_code == 400


def test_explicit_default_tenant_only(SessionLocal, two_tenants):
    a, b = two_tenants
    with TestClient(make_app(SessionLocal, default=a)) as client:
        post(client, a, "a-note")
        assert client.get("/notes").json() == [{"id": 1, "body": "a-note"}]
        assert get(client, b).json() == []


def test_uninstalled_factory_is_refused(pg_engine):
    with pytest.raises(TenancyError, match="not installed"):
        session_dependency(sessionmaker(pg_engine))


def test_name_policy_comes_from_the_installation(pg_engine, two_tenants, strategy):
    a, b = two_tenants
    factory = sessionmaker(pg_engine)
    installation = sa_tenancy.install(factory, strategy=strategy, names={a})
    try:
        with TestClient(make_app(factory)) as client:
            assert get(client, a).status_code == 200
            assert get(client, b).json() == {"detail": "invalid tenant name"}
    finally:
        installation.uninstall()


# -- AsyncSession ------------------------------------------------------------------------------


def test_async_session_dependency(pg_url, two_tenants, strategy):
    pytest.importorskip("greenlet", reason="AsyncSession needs sa_tenancy[asyncio]")
    import httpx
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.ext.asyncio import create_async_engine

    a, b = two_tenants
    ghost = unique_name()

    async def main():
        engine = create_async_engine(
            url_for_driver(pg_url, "psycopg"), pool_size=1, max_overflow=0, pool_timeout=5
        )
        factory = async_sessionmaker(engine, expire_on_commit=False)
        installation = sa_tenancy.install(factory, strategy=strategy)
        TenantSession = Annotated[AsyncSession, Depends(async_session_dependency(factory))]
        app = FastAPI()

        @app.post("/notes", status_code=201)
        async def create(payload: dict, session: TenantSession):
            note = Note(body=payload["body"])
            session.add(note)
            await session.commit()
            return {"id": note.id, "body": note.body}

        @app.get("/notes")
        async def list_notes(session: TenantSession):
            rows = await session.scalars(select(Note).order_by(Note.id))
            return [{"id": n.id, "body": n.body} for n in rows]

        @app.post("/explode")
        async def explode(payload: dict, session: TenantSession):
            session.add(Note(body=payload["body"]))
            await session.flush()
            raise RuntimeError("handler failed")

        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        pool: Any = engine.sync_engine.pool
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

                async def call(method, url, tenant=None, body=None):
                    headers = {"X-Tenant": tenant} if tenant is not None else {}
                    json = {"body": body} if body is not None else None
                    response = await client.request(method, url, headers=headers, json=json)
                    assert pool.checkedout() == 0
                    return response

                assert (await call("POST", "/notes", a, "a")).json() == {"id": 1, "body": "a"}
                assert (await call("POST", "/notes", b, "b")).json() == {"id": 1, "body": "b"}
                assert (await call("GET", "/notes", a)).json() == [{"id": 1, "body": "a"}]
                assert (await call("GET", "/notes", b)).json() == [{"id": 1, "body": "b"}]
                assert (await call("GET", "/notes")).status_code == 400
                assert (await call("GET", "/notes", "Bad")).status_code == 400
                unknown = await call("GET", "/notes", ghost)
                assert (unknown.status_code, unknown.json()) == (
                    404,
                    {"detail": f"unknown tenant {ghost!r}"},
                )
                assert (await call("POST", "/explode", a, "doomed")).status_code == 500
                assert (await call("GET", "/notes", a)).json() == [{"id": 1, "body": "a"}]
                # concurrent requests, alternating tenants, one pooled connection
                results = await asyncio.gather(
                    *(call("GET", "/notes", (a, b)[i % 2]) for i in range(10))
                )
                assert [r.json()[0]["body"] for r in results] == ["a", "b"] * 5
        finally:
            installation.uninstall()
            await engine.dispose()

    asyncio.run(main())


def test_pooled_connection_keeps_nothing(client, two_tenants, pg_engine, strategy):
    a, _ = two_tenants
    post(client, a, "x")
    with pg_engine.connect() as conn:
        assert conn.execute(text("SHOW search_path")).scalar() == '"$user", public'
