"""Django-ninja ``async def`` operations with ``NinjaTenancy(async_sessionmaker)``, on PostgreSQL.

In-process through Django's ``AsyncClient`` (one event loop per test, so the async engine's
connections stay on their loop), and under uvicorn with concurrent requests for two tenants.
"""

from __future__ import annotations

import asyncio
import sys
import types
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import TenancyError
from sa_tenancy.testing import unique_name
from sa_tenancy.testing import url_for_driver

from .models import Note

pytest.importorskip("greenlet", reason="needs sa_tenancy[asyncio]")
django = pytest.importorskip("django", reason="needs sa_tenancy[ninja]")

from django.conf import settings  # type: ignore[import-untyped]  # noqa: E402

if not settings.configured:
    settings.configure(
        SECRET_KEY="sa-tenancy-tests",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
    )
    django.setup()

pytest.importorskip("ninja", reason="needs sa_tenancy[ninja]")

from django.test import AsyncClient  # type: ignore[import-untyped]  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.urls import path  # type: ignore[import-untyped]  # noqa: E402
from ninja import NinjaAPI  # noqa: E402
from ninja.decorators import decorate_view  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402
from sqlalchemy.ext.asyncio import async_sessionmaker  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from sa_tenancy.integrations.django_ninja import NinjaTenancy  # noqa: E402

from ._ninja_async_app import make_api  # noqa: E402
from .test_example_apps import check_served  # noqa: E402
from .test_example_apps import serve as serve_app  # noqa: E402


def serve(api):
    urls = types.ModuleType(f"urls_{uuid.uuid4().hex}")
    urls.urlpatterns = [path("", api.urls)]  # type: ignore[attr-defined]
    return override_settings(ROOT_URLCONF=urls, DEBUG=False, ALLOWED_HOSTS=["testserver"])


def run_with_factory(pg_url, strategy, body):
    """``await body(factory)`` on a fresh async engine and installed factory, in one loop."""

    async def main():
        engine = create_async_engine(url_for_driver(pg_url, "psycopg"), pool_size=3)
        factory = async_sessionmaker(engine, expire_on_commit=False)
        installation = sa_tenancy.install(factory, strategy=strategy, require=True)
        try:
            await body(factory)
            assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        finally:
            installation.uninstall()
            await engine.dispose()

    asyncio.run(main())


def post(client, tenant, body):
    headers = {"X-Tenant": tenant} if tenant else {}
    return client.post("/notes", {"body": body}, content_type="application/json", headers=headers)


def get(client, tenant, url="/notes"):
    return client.get(url, headers={"X-Tenant": tenant} if tenant else {})


def test_async_operations_serve_the_request_tenant(pg_url, two_tenants, strategy):
    a, b = two_tenants

    async def body(factory):
        tenancy: NinjaTenancy[AsyncSession] = NinjaTenancy(factory)
        api = make_api(tenancy, namespace=f"a{uuid.uuid4().hex}")
        with serve(api):
            client = AsyncClient(raise_request_exception=False)
            created = await post(client, a, "a1")
            assert (created.status_code, created.json()) == (201, {"id": 1, "body": "a1"})
            assert (await post(client, b, "b1")).json() == {"id": 1, "body": "b1"}
            # Concurrent requests for both tenants on one event loop.
            jobs = [post(client, t, f"{t}-{i}") for i in range(4) for t in (a, b)]
            assert {r.status_code for r in await asyncio.gather(*jobs)} == {201}
            listed = await asyncio.gather(*(get(client, t) for t in (a, b, a, b)))
            for tenant, response in zip((a, b, a, b), listed, strict=True):
                bodies = [n["body"] for n in response.json()]
                first = "a1" if tenant == a else "b1"
                assert sorted(bodies) == sorted([first, *(f"{tenant}-{i}" for i in range(4))])
            missing = await get(client, None)
            assert (missing.status_code, missing.json()) == (
                400,
                {"detail": "missing tenant: send the X-Tenant header"},
            )
            assert (await get(client, "Not-A-Name")).status_code == 400
            ghost = unique_name("ghost")
            for response in (await get(client, ghost), await post(client, ghost, "lost")):
                assert response.status_code == 404
                assert response.json() == {"detail": f"unknown tenant {ghost!r}"}

    run_with_factory(pg_url, strategy, body)


def test_async_tenant_missing_a_table_is_a_server_error(pg_url, pg_tenants, strategy):
    (bare,) = pg_tenants(None, 1)

    async def body(factory):
        api = make_api(NinjaTenancy(factory), namespace=f"a{uuid.uuid4().hex}")
        with serve(api):
            client = AsyncClient(raise_request_exception=False)
            assert (await get(client, bare)).status_code == 500

    run_with_factory(pg_url, strategy, body)


def test_async_session_is_closed_and_rolled_back(pg_url, two_tenants):
    a, _ = two_tenants
    seen: list[Any] = []

    async def body(factory):
        api = NinjaAPI(urls_namespace=f"a{uuid.uuid4().hex}")
        tenancy: NinjaTenancy[AsyncSession] = NinjaTenancy(factory)
        tenancy.init_api(api)

        @api.post("/explode")
        async def explode(request):
            session = tenancy.session(request)
            assert session is tenancy.session(request)
            seen.append(session)
            session.add(Note(body="doomed"))
            await session.flush()
            raise RuntimeError("operation failed")

        @api.get("/count")
        async def count(request):
            session = tenancy.session(request)
            return {"n": len((await session.scalars(select(Note))).all())}

        with serve(api):
            client = AsyncClient(raise_request_exception=False)
            exploded = await client.post("/explode", headers={"X-Tenant": a})
            assert exploded.status_code == 500
            assert (await client.get("/count", headers={"X-Tenant": a})).json() == {"n": 0}
        assert isinstance(seen[0], AsyncSession) and not seen[0].in_transaction()

    run_with_factory(pg_url, "search_path", body)


def test_misuse_names_the_real_cause(pg_url, pg_engine, two_tenants):
    a, _ = two_tenants
    kept: list[Any] = []
    sync_factory = sessionmaker(pg_engine)
    sa_tenancy.install(sync_factory)

    async def body(factory):
        api = NinjaAPI(urls_namespace=f"a{uuid.uuid4().hex}")
        tenancy: NinjaTenancy[AsyncSession] = NinjaTenancy(factory)
        tenancy.init_api(api)
        sync_tenancy: NinjaTenancy[Any] = NinjaTenancy(sync_factory)

        @api.get("/sync")
        def sync_operation(request):  # misuse: an AsyncSession in a sync operation
            session: Any = tenancy.session(request)
            return {"n": len(session.scalars(select(Note)).all())}

        @api.get("/keep")
        async def keep(request):
            kept.append(request)
            return {"ok": True}

        @api.get("/blocking")
        @decorate_view(sync_tenancy.view)
        async def blocking(request):
            return {"n": len(sync_tenancy.session(request).scalars(select(Note)).all())}

        @api.get("/unscoped")
        async def unscoped(request):
            return {"n": len((await sync_tenancy.session(request).scalars(select(Note))).all())}

        with serve(api):
            client = AsyncClient()
            headers = {"X-Tenant": a}
            with pytest.raises(TenancyError, match="this is a sync operation, but .* AsyncSession"):
                await client.get("/sync", headers=headers)
            with pytest.raises(TenancyError, match="this is an async def operation, but .* sync"):
                await client.get("/blocking", headers=headers)
            with pytest.raises(TenancyError, match="no tenant scope: call tenancy.init_api"):
                await client.get("/unscoped", headers=headers)
            assert (await client.get("/keep", headers=headers)).status_code == 200
        with pytest.raises(TenancyError, match="tenant scope has ended"):
            tenancy.session(kept[0])

    run_with_factory(pg_url, "search_path", body)
    sa_tenancy.uninstall(sync_factory)


# -- under uvicorn -------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["search_path", "translate_map"])
def test_async_operations_under_uvicorn(strategy, pg_url, pg_example_tenants, tmp_path):
    env = {
        "DATABASE_URL": pg_url,
        "TENANTS": ",".join(pg_example_tenants),
        "TENANCY_STRATEGY": strategy,
    }
    app = [sys.executable, "-m", "uvicorn", "tests._ninja_async_app:app", "--host", "127.0.0.1"]
    log = tmp_path / "server.log"
    with serve_app(lambda port: [*app, "--port", str(port)], env, log, name="uvicorn") as base:
        check_served(base, pg_example_tenants, per_tenant=8)
    assert "Traceback" not in log.read_text()
