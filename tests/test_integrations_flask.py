"""Flask integration through Flask's test client, against real PostgreSQL, both strategies."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from sa_tenancy import TenancyError
from sa_tenancy.testing import unique_name

from .models import Note
from .models import tenant_metadata

pytest.importorskip("flask", reason="needs sa_tenancy[flask]")

from flask import Flask
from flask import abort
from flask import request

from sa_tenancy.integrations import path_param
from sa_tenancy.integrations import subdomain
from sa_tenancy.integrations.flask import FlaskTenancy

HOSTILE = ['a"; DROP SCHEMA public CASCADE; --', "x" * 64, "public", "pg_catalog", "Acme", " "]


def make_app(factory, **options):
    tenancy: FlaskTenancy[Any] = FlaskTenancy(factory, **options)
    app = Flask(__name__)
    tenancy.init_app(app)

    @app.post("/notes")
    def create():
        note = Note(body=request.get_json()["body"])
        tenancy.session.add(note)
        tenancy.session.commit()
        return {"id": note.id, "body": note.body}, 201

    @app.get("/notes")
    def list_notes():
        notes = tenancy.session.scalars(select(Note).order_by(Note.id))
        return [{"id": n.id, "body": n.body} for n in notes]

    @app.post("/explode")
    def explode():
        tenancy.session.add(Note(body=request.get_json()["body"]))
        tenancy.session.flush()  # the row is in the transaction...
        raise RuntimeError("view failed")  # ...which must be rolled back

    @app.get("/nothing")
    def nothing():
        return {"ok": True}  # never touches the session: no tenant needed

    @app.get("/missing")
    def missing():
        tenancy.session.scalars(select(Note)).all()
        abort(404)

    @app.get("/<tenant>/notes")
    def by_path(tenant):
        return [n.body for n in tenancy.session.scalars(select(Note))]

    return app, tenancy


@pytest.fixture
def app(SessionLocal):
    app, _ = make_app(SessionLocal)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def post(client, tenant, body):
    return client.post("/notes", json={"body": body}, headers={"X-Tenant": tenant})


def get(client, tenant):
    return client.get("/notes", headers={"X-Tenant": tenant})


def test_isolation_between_tenants_with_identical_ids(client, two_tenants, pg_engine):
    a, b = two_tenants
    assert post(client, a, "from a").json == {"id": 1, "body": "from a"}
    assert post(client, b, "from b").json == {"id": 1, "body": "from b"}
    assert post(client, a, "again a").status_code == 201
    assert get(client, a).json == [{"id": 1, "body": "from a"}, {"id": 2, "body": "again a"}]
    assert get(client, b).json == [{"id": 1, "body": "from b"}]
    assert pg_engine.pool.checkedout() == 0


def test_missing_tenant_is_400(client, two_tenants, statements):
    response = client.get("/notes")
    assert response.status_code == 400
    assert response.json == {"detail": "missing tenant: send the X-Tenant header"}
    assert statements.entries == []
    assert client.get("/nothing").json == {"ok": True}  # no session, no tenant, no error


@pytest.mark.parametrize("name", HOSTILE)
def test_invalid_name_is_400_before_any_sql(client, statements, name):
    response = get(client, name)
    assert (response.status_code, response.json) == (400, {"detail": "invalid tenant name"})
    assert statements.entries == []


def test_unknown_tenant_is_404(client, two_tenants, pg_engine):
    ghost = unique_name()
    for response in (get(client, ghost), post(client, ghost, "lost")):
        assert response.status_code == 404
        assert response.json == {"detail": f"unknown tenant {ghost!r}"}
        assert pg_engine.pool.checkedout() == 0


def test_dropped_tenant_is_404_at_once(client, pg_tenants, pg_engine):
    (tenant,) = pg_tenants(tenant_metadata, 1)
    assert get(client, tenant).status_code == 200
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{tenant}" CASCADE')
    assert get(client, tenant).status_code == 404


def test_tenant_missing_a_table_is_a_server_error_not_404(app, pg_tenants, pg_engine):
    (bare,) = pg_tenants(None, 1)
    response = app.test_client().get("/notes", headers={"X-Tenant": bare})
    assert response.status_code == 500
    assert pg_engine.pool.checkedout() == 0


def test_view_exception_rolls_back(app, client, two_tenants, pg_engine):
    a, _ = two_tenants
    app.testing = False  # render the 500 instead of raising into the test
    response = client.post("/explode", json={"body": "doomed"}, headers={"X-Tenant": a})
    assert response.status_code == 500
    assert pg_engine.pool.checkedout() == 0
    assert get(client, a).json == []


def test_view_exception_propagates_in_testing_mode_and_still_rolls_back(
    app, client, two_tenants, pg_engine
):
    a, _ = two_tenants
    app.testing = True
    with pytest.raises(RuntimeError, match="view failed"):
        client.post("/explode", json={"body": "doomed"}, headers={"X-Tenant": a})
    assert pg_engine.pool.checkedout() == 0
    assert get(client, a).json == []


def test_http_error_passes_through(client, two_tenants, pg_engine):
    response = client.get("/missing", headers={"X-Tenant": two_tenants[0]})
    assert response.status_code == 404
    assert pg_engine.pool.checkedout() == 0


def test_one_session_per_request_closed_at_teardown(SessionLocal, two_tenants, pg_engine):
    app, tenancy = make_app(SessionLocal)
    seen = []

    @app.get("/peek")
    def peek():
        assert tenancy.session is tenancy.session  # lazily made once per request
        seen.append(tenancy.session)
        return {"n": len(tenancy.session.scalars(select(Note)).all())}

    client = app.test_client()
    with app.app_context():  # one app context around several requests must not share sessions
        for tenant in two_tenants:
            assert client.get("/peek", headers={"X-Tenant": tenant}).status_code == 200
            assert pg_engine.pool.checkedout() == 0
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert [s.info["schema"] for s in seen] == two_tenants
    assert all(s.get_transaction() is None for s in seen)


def test_double_registration_is_refused(SessionLocal):
    app, _ = make_app(SessionLocal)
    with pytest.raises(TenancyError, match="already registered"):
        FlaskTenancy(SessionLocal).init_app(app)


def test_session_outside_a_request_is_refused(SessionLocal):
    app, tenancy = make_app(SessionLocal)
    with app.app_context(), pytest.raises(TenancyError, match="needs a request"):
        tenancy.session  # noqa: B018


def test_uninstalled_factory_is_refused(pg_engine):
    with pytest.raises(TenancyError, match="not installed"):
        FlaskTenancy(sessionmaker(pg_engine))


def test_path_resolver(SessionLocal, two_tenants):
    a, b = two_tenants
    post(make_app(SessionLocal)[0].test_client(), a, "a-note")
    client = make_app(SessionLocal, resolver=path_param("tenant"))[0].test_client()
    assert client.get(f"/{a}/notes").json == ["a-note"]
    assert client.get(f"/{b}/notes").json == []
    assert client.get("/notes").status_code == 400


def test_subdomain_resolver(SessionLocal, pg_tenants):
    # Host names have no underscores (Werkzeug rejects them): tenants named like host labels.
    a, b = pg_tenants(tenant_metadata, names=[unique_name("s").replace("_", "") for _ in "ab"])
    client = make_app(SessionLocal, resolver=subdomain("example.test"))[0].test_client()
    created = client.post("/notes", json={"body": "a-note"}, base_url=f"http://{a}.example.test")
    assert created.status_code == 201
    assert client.get("/notes", base_url=f"http://{a}.example.test").json[0]["body"] == "a-note"
    assert client.get("/notes", base_url=f"http://{b}.example.test:8080").json == []
    assert client.get("/notes", base_url="http://example.test").status_code == 400
    assert client.get("/notes", base_url=f"http://{a}.evil.test").status_code == 400
    assert client.get("/notes", base_url=f"http://x.{a}.example.test").status_code == 400


def test_explicit_default_tenant_only(SessionLocal, two_tenants):
    a, b = two_tenants
    client = make_app(SessionLocal, default=a)[0].test_client()
    post(client, a, "a-note")
    assert client.get("/notes").json == [{"id": 1, "body": "a-note"}]
    assert get(client, b).json == []


def test_pooled_connection_keeps_nothing(client, two_tenants, pg_engine):
    post(client, two_tenants[0], "x")
    with pg_engine.connect() as conn:
        assert conn.execute(text("SHOW search_path")).scalar() == '"$user", public'
