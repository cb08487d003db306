"""An ASGI django-ninja app with ``async def`` operations, served by uvicorn in the tests.

``uvicorn tests._ninja_async_app:app`` with ``DATABASE_URL`` (PostgreSQL), ``TENANTS`` (created
at start-up if missing) and ``TENANCY_STRATEGY``. The contract is the example apps' one (see
``tests/test_example_apps.py``), through an ``AsyncSession`` per request.
"""

from __future__ import annotations

import os

import django  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="sa-tenancy-tests",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
    )
    django.setup()

from django.core.asgi import get_asgi_application  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]
from ninja import NinjaAPI
from ninja import Schema
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine

import sa_tenancy
from sa_tenancy.integrations.django_ninja import NinjaTenancy
from sa_tenancy.testing import url_for_driver
from tests.models import Note
from tests.models import tenant_metadata


class NoteIn(Schema):
    body: str


class NoteOut(Schema):
    id: int
    body: str


def make_api(tenancy: NinjaTenancy[AsyncSession], namespace: str = "async_notes") -> NinjaAPI:
    """The notes API on ``tenancy``: every operation is ``async def``."""
    api = NinjaAPI(urls_namespace=namespace)
    tenancy.init_api(api)

    @api.post("/notes", response={201: NoteOut})
    async def create_note(request, note: NoteIn):
        session = tenancy.session(request)
        row = Note(body=note.body)
        session.add(row)
        await session.commit()
        return row  # the only status: 201; expire_on_commit=False: serialised without I/O

    @api.get("/notes", response=list[NoteOut])
    async def list_notes(request):
        session = tenancy.session(request)
        return (await session.scalars(select(Note).order_by(Note.id))).all()

    return api


def provision(url: str, tenants: list[str]) -> None:
    engine = create_engine(url_for_driver(url, "psycopg"))
    try:
        for tenant in tenants:
            sa_tenancy.create_tenant(engine, tenant, metadata=tenant_metadata, exist_ok=True)
    finally:
        engine.dispose()


if os.environ.get("DATABASE_URL"):  # served: configured by the environment
    _url = os.environ["DATABASE_URL"]
    provision(_url, [t for t in os.environ.get("TENANTS", "").split(",") if t])
    _factory = async_sessionmaker(
        create_async_engine(url_for_driver(_url, "psycopg"), pool_size=4),
        expire_on_commit=False,
    )
    sa_tenancy.install(
        _factory, strategy=os.environ.get("TENANCY_STRATEGY", "search_path"), require=True
    )
    urlpatterns = [path("", make_api(NinjaTenancy(_factory)).urls)]
    app = get_asgi_application()
