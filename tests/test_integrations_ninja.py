"""Django-ninja integration through Django's test client, against real PostgreSQL, both strategies.

Django settings are process-global: they are configured once, only if nobody did it before (the
ninja example configures them the same way), and every test states what it relies on with
``override_settings``, which Django undoes after the test.
"""

from __future__ import annotations

import types
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from sa_tenancy import TenancyError
from sa_tenancy.testing import unique_name

from .models import Note
from .models import tenant_metadata

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

ninja = pytest.importorskip("ninja", reason="needs sa_tenancy[ninja]")

from django.test import Client  # type: ignore[import-untyped]  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.urls import path  # type: ignore[import-untyped]  # noqa: E402
from ninja import NinjaAPI  # noqa: E402
from ninja import Schema  # noqa: E402
from ninja.decorators import decorate_view  # noqa: E402
from ninja.errors import HttpError  # noqa: E402

from sa_tenancy.integrations import path_param  # noqa: E402
from sa_tenancy.integrations import subdomain  # noqa: E402
from sa_tenancy.integrations.django_ninja import NinjaTenancy  # noqa: E402

HOSTILE = ['a"; DROP SCHEMA public CASCADE; --', "x" * 64, "public", "pg_catalog", "Acme", " "]


class NoteIn(Schema):
    body: str


class NoteOut(Schema):
    id: int
    body: str


def make_api(factory, **options):
    api = NinjaAPI(urls_namespace=f"t{uuid.uuid4().hex}")
    tenancy: NinjaTenancy[Any] = NinjaTenancy(factory, **options)
    tenancy.init_api(api)

    @api.post("/notes", response={201: NoteOut})
    def create(request, note: NoteIn):
        row = Note(body=note.body)
        session = tenancy.session(request)
        session.add(row)
        session.commit()
        return row  # expired by the commit: serialised while the session is still open

    @api.get("/notes", response=list[NoteOut])
    def list_notes(request):
        return tenancy.session(request).scalars(select(Note).order_by(Note.id)).all()

    @api.post("/explode")
    def explode(request, note: NoteIn):
        session = tenancy.session(request)
        session.add(Note(body=note.body))
        session.flush()  # the row is in the transaction...
        raise RuntimeError("operation failed")  # ...which must be rolled back

    @api.get("/nothing")
    def nothing(request):
        return {"ok": True}

    @api.get("/missing")
    def missing(request):
        tenancy.session(request).scalars(select(Note)).all()
        raise HttpError(404, "no such note")

    @api.get("/{tenant}/notes", response=list[str])
    def by_path(request, tenant: str):
        return tenancy.session(request).scalars(select(Note.body)).all()

    return api, tenancy


def serve(api, *, debug=False, hosts=("testserver",)):
    urls = types.ModuleType(f"urls_{uuid.uuid4().hex}")
    urls.urlpatterns = [path("", api.urls)]  # type: ignore[attr-defined]
    return override_settings(ROOT_URLCONF=urls, DEBUG=debug, ALLOWED_HOSTS=list(hosts))


@pytest.fixture
def client(SessionLocal):
    api, _ = make_api(SessionLocal)
    with serve(api):
        yield Client(raise_request_exception=False)


def post(client, tenant, body):
    return client.post(
        "/notes", {"body": body}, content_type="application/json", headers={"X-Tenant": tenant}
    )


def get(client, tenant):
    return client.get("/notes", headers={"X-Tenant": tenant})


def test_isolation_between_tenants_with_identical_ids(client, two_tenants, pg_engine):
    a, b = two_tenants
    created = post(client, a, "from a")
    assert (created.status_code, created.json()) == (201, {"id": 1, "body": "from a"})
    assert post(client, b, "from b").json() == {"id": 1, "body": "from b"}
    assert post(client, a, "again a").status_code == 201
    assert get(client, a).json() == [{"id": 1, "body": "from a"}, {"id": 2, "body": "again a"}]
    assert get(client, b).json() == [{"id": 1, "body": "from b"}]
    assert pg_engine.pool.checkedout() == 0


def test_missing_tenant_is_400(client, two_tenants, statements):
    response = client.get("/notes")
    assert response.status_code == 400
    assert response.json() == {"detail": "missing tenant: send the X-Tenant header"}
    assert statements.entries == []
    assert client.get("/nothing").json() == {"ok": True}


@pytest.mark.parametrize("name", HOSTILE)
def test_invalid_name_is_400_before_any_sql(client, statements, name):
    response = get(client, name)
    assert (response.status_code, response.json()) == (400, {"detail": "invalid tenant name"})
    assert statements.entries == []


def test_unknown_tenant_is_404(client, two_tenants, pg_engine):
    ghost = unique_name()
    for response in (get(client, ghost), post(client, ghost, "lost")):
        assert response.status_code == 404
        assert response.json() == {"detail": f"unknown tenant {ghost!r}"}
        assert pg_engine.pool.checkedout() == 0


def test_errors_are_mapped_in_debug_mode_too(SessionLocal, two_tenants, pg_engine):
    api, _ = make_api(SessionLocal)
    with serve(api, debug=True):
        client = Client(raise_request_exception=False)
        assert client.get("/notes").status_code == 400
        assert get(client, unique_name()).status_code == 404
        assert pg_engine.pool.checkedout() == 0


def test_dropped_tenant_is_404_at_once(client, pg_tenants, pg_engine):
    (tenant,) = pg_tenants(tenant_metadata, 1)
    assert get(client, tenant).status_code == 200
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{tenant}" CASCADE')
    assert get(client, tenant).status_code == 404


def test_tenant_missing_a_table_is_a_server_error_not_404(client, pg_tenants, pg_engine):
    (bare,) = pg_tenants(None, 1)
    assert get(client, bare).status_code == 500
    assert pg_engine.pool.checkedout() == 0


def test_operation_exception_rolls_back(client, two_tenants, pg_engine):
    a, _ = two_tenants
    response = client.post(
        "/explode", {"body": "doomed"}, content_type="application/json", headers={"X-Tenant": a}
    )
    assert response.status_code == 500
    assert pg_engine.pool.checkedout() == 0
    assert get(client, a).json() == []


def test_http_error_passes_through(client, two_tenants, pg_engine):
    response = client.get("/missing", headers={"X-Tenant": two_tenants[0]})
    assert (response.status_code, response.json()) == (404, {"detail": "no such note"})
    assert pg_engine.pool.checkedout() == 0


def test_one_session_per_request_closed_at_the_end(SessionLocal, two_tenants, pg_engine):
    api, tenancy = make_api(SessionLocal)
    seen = []

    @api.get("/peek")
    def peek(request):
        assert tenancy.session(request) is tenancy.session(request)
        seen.append(tenancy.session(request))
        return {"n": len(tenancy.session(request).scalars(select(Note)).all())}

    with serve(api):
        client = Client()
        for tenant in two_tenants:
            assert client.get("/peek", headers={"X-Tenant": tenant}).status_code == 200
            assert pg_engine.pool.checkedout() == 0
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert [s.info["schema"] for s in seen] == two_tenants
    assert all(s.get_transaction() is None for s in seen)


def test_decorate_view_without_init_api(SessionLocal, two_tenants, pg_engine):
    api = NinjaAPI(urls_namespace=f"t{uuid.uuid4().hex}")
    tenancy: NinjaTenancy[Any] = NinjaTenancy(SessionLocal)

    @api.get("/scoped")
    @decorate_view(tenancy.view)
    def scoped(request):
        return tenancy.session(request).scalars(select(Note.body)).all()

    @api.get("/unscoped")
    def unscoped(request):
        return tenancy.session(request).scalars(select(Note.body)).all()

    a, _ = two_tenants
    with serve(api):
        client = Client()
        assert client.get("/scoped", headers={"X-Tenant": a}).json() == []
        assert client.get("/scoped").status_code == 400
        assert client.get("/scoped", headers={"X-Tenant": unique_name()}).status_code == 404
        with pytest.raises(TenancyError, match="no tenant scope"):
            client.get("/unscoped", headers={"X-Tenant": a})
    assert pg_engine.pool.checkedout() == 0


def test_double_registration_is_refused(SessionLocal):
    api, _ = make_api(SessionLocal)
    with pytest.raises(TenancyError, match="already registered"):
        NinjaTenancy(SessionLocal).init_api(api)


def test_uninstalled_factory_is_refused(pg_engine):
    with pytest.raises(TenancyError, match="not installed"):
        NinjaTenancy(sessionmaker(pg_engine))


def test_path_resolver(SessionLocal, two_tenants):
    a, b = two_tenants
    api, _ = make_api(SessionLocal)
    with serve(api):
        post(Client(), a, "a-note")
    api, _ = make_api(SessionLocal, resolver=path_param("tenant"))
    with serve(api):
        client = Client()
        assert client.get(f"/{a}/notes").json() == ["a-note"]
        assert client.get(f"/{b}/notes").json() == []
        assert client.get("/notes").status_code == 400


def test_subdomain_resolver(SessionLocal, pg_tenants):
    # Django's get_host() accepts no underscores: tenants named like host labels.
    a, b = pg_tenants(tenant_metadata, names=[unique_name("s").replace("_", "") for _ in "ab"])
    api, _ = make_api(SessionLocal, resolver=subdomain("example.test"))
    with serve(api, hosts=[".example.test", ".evil.test"]):
        client = Client(raise_request_exception=False)
        created = client.post(
            "/notes",
            {"body": "a-note"},
            content_type="application/json",
            HTTP_HOST=f"{a}.example.test",
        )
        assert created.status_code == 201
        assert client.get("/notes", HTTP_HOST=f"{a}.example.test").json()[0]["body"] == "a-note"
        assert client.get("/notes", HTTP_HOST=f"{b}.example.test").json() == []
        assert client.get("/notes", HTTP_HOST="example.test").status_code == 400
        assert client.get("/notes", HTTP_HOST=f"{a}.evil.test").status_code == 400
        assert client.get("/notes", HTTP_HOST=f"x.{a}.example.test").status_code == 400


def test_explicit_default_tenant_only(SessionLocal, two_tenants):
    a, b = two_tenants
    api, _ = make_api(SessionLocal, default=a)
    with serve(api):
        client = Client()
        post(client, a, "a-note")
        assert client.get("/notes").json() == [{"id": 1, "body": "a-note"}]
        assert get(client, b).json() == []


def test_pooled_connection_keeps_nothing(client, two_tenants, pg_engine):
    post(client, two_tenants[0], "x")
    with pg_engine.connect() as conn:
        assert conn.execute(text("SHOW search_path")).scalar() == '"$user", public'
