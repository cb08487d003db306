"""``FlaskTenancy(db)`` with Flask-SQLAlchemy, against real PostgreSQL, both strategies.

Views use ``db.session``, ``Model.query``, ``db.paginate`` and ``db.get_or_404`` unchanged. Each
test makes its own ``SQLAlchemy`` object, app and models (a ``db`` is served by one
``FlaskTenancy``), on the same ``notes`` table as the other tests.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import String
from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import SchemaRequired
from sa_tenancy import TenancyError
from sa_tenancy.testing import DECOY
from sa_tenancy.testing import unique_name

from .models import tenant_metadata

pytest.importorskip("flask_sqlalchemy", reason="needs Flask-SQLAlchemy (the test extra)")

from flask import Flask
from flask import request
from flask_sqlalchemy import SQLAlchemy

from sa_tenancy.integrations.flask import FlaskTenancy
from sa_tenancy.integrations.workers import for_each_tenant
from sa_tenancy.integrations.workers import tenant_session

from .test_example_apps import ROOT
from .test_example_apps import check_served
from .test_example_apps import serve


class Stack:
    """One Flask-SQLAlchemy app: ``db``, its ``Note`` model, the app, the tenancy, a client."""

    def __init__(self, pg_url: str, strategy: str | None, **options: Any) -> None:
        class Base(DeclarativeBase):
            pass

        db = SQLAlchemy(model_class=Base)

        class Note(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "notes"
            id: Mapped[int] = mapped_column(primary_key=True)
            body: Mapped[str] = mapped_column(String(100))

        self.db, self.Note = db, Note
        self.app = Flask(__name__)
        self.app.config["SQLALCHEMY_DATABASE_URI"] = pg_url
        db.init_app(self.app)
        self.tenancy: FlaskTenancy[Any] = FlaskTenancy(db, self.app, strategy=strategy, **options)
        self.sessions: list[Any] = []  # every session a view saw
        self.routes()
        self.client = self.app.test_client()

    def routes(self) -> None:
        app, db, Note = self.app, self.db, self.Note

        @app.post("/notes")
        def create():
            note = Note(body=request.get_json()["body"])
            db.session.add(note)
            db.session.commit()
            self.sessions.append(db.session())
            return {"id": note.id, "body": note.body}, 201

        @app.get("/notes")
        def list_notes():
            self.sessions.append(db.session())
            return [n.body for n in Note.query.order_by(Note.id)]

        @app.get("/page")
        def page():
            result = db.paginate(db.select(Note).order_by(Note.id), per_page=2)
            return {"total": result.total, "bodies": [n.body for n in result.items]}

        @app.get("/notes/<int:note_id>")
        def one(note_id):
            return {"body": db.get_or_404(Note, note_id).body}

        @app.post("/explode")
        def explode():
            db.session.add(Note(body="doomed"))
            db.session.flush()
            raise RuntimeError("view failed")

        @app.get("/nothing")
        def nothing():
            return {"ok": True}

    def post(self, tenant: str | None, body: str) -> Any:
        headers = {"X-Tenant": tenant} if tenant else {}
        return self.client.post("/notes", json={"body": body}, headers=headers)

    def get(self, tenant: str | None, url: str = "/notes") -> Any:
        return self.client.get(url, headers={"X-Tenant": tenant} if tenant else {})

    def checked_out(self) -> int:
        with self.app.app_context():
            pool: Any = self.db.engine.pool
            return int(pool.checkedout())

    def dispose(self) -> None:
        with self.app.app_context():
            self.db.engine.dispose()


@pytest.fixture
def stacks(pg_url) -> Iterator[Any]:
    made: list[Stack] = []

    def make(strategy: str | None = "search_path", **options: Any) -> Stack:
        made.append(Stack(pg_url, strategy, **options))
        return made[-1]

    yield make
    for stack in made:
        stack.dispose()


@pytest.fixture
def stack(stacks, strategy) -> Stack:
    return stacks(strategy)


def test_session_query_paginate_and_get_or_404_serve_the_request_tenant(stack, two_tenants):
    a, b = two_tenants
    assert stack.post(a, "a1").json == {"id": 1, "body": "a1"}
    assert stack.post(b, "b1").json == {"id": 1, "body": "b1"}
    assert stack.post(a, "a2").status_code == 201
    assert stack.post(a, "a3").status_code == 201
    assert stack.get(a).json == ["a1", "a2", "a3"]  # Model.query
    assert stack.get(b).json == ["b1"]
    assert stack.get(a, "/page?page=2").json == {"total": 3, "bodies": ["a3"]}  # db.paginate
    assert stack.get(b, "/page").json == {"total": 1, "bodies": ["b1"]}
    assert stack.get(a, "/notes/3").json == {"body": "a3"}  # db.get_or_404
    assert stack.get(b, "/notes/3").status_code == 404  # b has no note 3: Flask's own 404
    assert stack.checked_out() == 0
    with stack.app.app_context():  # the rows are where they belong, and nothing in public
        with stack.db.engine.connect() as conn:
            assert conn.scalars(text(f"SELECT body FROM {a}.notes ORDER BY id")).all() == [
                "a1",
                "a2",
                "a3",
            ]
            assert conn.scalars(text("SELECT body FROM public.notes")).all() == [DECOY]


def test_tenant_errors_are_400_and_404(stack, two_tenants):
    with stack.app.app_context():
        engine = stack.db.engine
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    response = stack.get(None)
    assert (response.status_code, response.json) == (
        400,
        {"detail": "missing tenant: send the X-Tenant header"},
    )
    assert stack.get("Not-A-Name").json == {"detail": "invalid tenant name"}
    assert sent == []  # decided before any SQL
    assert stack.get(None, "/nothing").json == {"ok": True}  # no db.session, no tenant needed
    ghost = unique_name("ghost")
    for response in (stack.get(ghost), stack.post(ghost, "lost"), stack.get(ghost, "/page")):
        assert (response.status_code, response.json) == (
            404,
            {"detail": f"unknown tenant {ghost!r}"},
        )
    assert stack.checked_out() == 0


def test_requests_inside_nested_app_contexts_never_share_a_session(stack, two_tenants):
    """The usual test fixture: one app context around many requests (it used to fail with
    "Scoped session is already present", and one session would have served every request)."""
    a, b = two_tenants
    with stack.app.app_context():
        with stack.app.app_context():
            assert stack.post(a, "a1").status_code == 201
            assert stack.post(b, "b1").status_code == 201
            assert stack.get(a).json == ["a1"]
            assert stack.get(b).json == ["b1"]
            assert stack.get(None).status_code == 400  # not the previous request's tenant
            assert stack.get(a).json == ["a1"]
            assert stack.checked_out() == 0
    schemas = [s.info["schema"] for s in stack.sessions]
    assert schemas == [a, b, a, b, a]
    assert len({id(s) for s in stack.sessions}) == len(stack.sessions)
    assert all(s.get_transaction() is None for s in stack.sessions)  # closed at teardown


def test_sequential_requests_on_one_thread_never_inherit_the_tenant(stack, two_tenants):
    a, b = two_tenants
    threads = set()

    @stack.app.get("/thread")
    def thread():
        threads.add(threading.get_ident())
        return {"bodies": [n.body for n in stack.Note.query]}

    stack.post(a, "a1")
    assert stack.get(a, "/thread").json == {"bodies": ["a1"]}
    assert stack.get(b, "/thread").json == {"bodies": []}
    after = stack.get(None, "/thread")
    assert (after.status_code, after.json["detail"]) == (
        400,
        "missing tenant: send the X-Tenant header",
    )
    assert stack.get(a, "/thread").json == {"bodies": ["a1"]}
    assert threads == {threading.get_ident()}


def test_view_exception_rolls_back(stack, two_tenants):
    a, _ = two_tenants
    stack.app.testing = False  # render the 500 instead of raising into the test
    assert stack.client.post("/explode", headers={"X-Tenant": a}).status_code == 500
    assert stack.checked_out() == 0
    assert stack.get(a).json == []


def test_db_session_outside_a_request_fails_closed(stack, two_tenants):
    with stack.app.app_context():
        with pytest.raises(SchemaRequired, match="tenant_session\\(tenancy"):
            stack.db.session.execute(select(stack.Note))
        with pytest.raises(TenancyError, match="needs a request"):
            stack.tenancy.session  # noqa: B018


def test_jobs_get_tenant_sessions_without_an_app_context(stack, two_tenants):
    a, b = two_tenants
    with tenant_session(stack.tenancy, a) as session:  # no app context pushed by the caller
        session.add(stack.Note(body="from a job"))
        session.commit()

    def count(session, schema):
        session.add(stack.Note(body=f"{schema} batch"))
        session.flush()
        return session.scalar(select(func.count()).select_from(stack.Note))

    run = for_each_tenant(stack.tenancy, count, tenants=[a, b], jobs=2, progress=False)
    assert run.ok and run.results == {a: 2, b: 1}
    with stack.app.app_context():
        engine = stack.db.engine
    made = sa_tenancy.create_tenant(engine, unique_name("made"), metadata=tenant_metadata)
    try:  # without tenants=, the tenants are listed through the app's engine
        listed = for_each_tenant(stack.tenancy, lambda s, schema: schema, progress=False)
        assert made in listed.tenants and listed.ok
    finally:
        sa_tenancy.drop_tenant(engine, made)
    assert stack.get(a).json == ["from a job", f"{a} batch"]
    with pytest.raises(TenancyError, match="pass the FlaskTenancy"):
        with tenant_session(stack.db.session, a):
            pass
    with pytest.raises(TenancyError, match="pass the FlaskTenancy"):
        for_each_tenant(stack.db.session, count, tenants=[a])
    assert stack.checked_out() == 0


def test_jobs_need_one_app_or_an_app_context(stacks, two_tenants):
    stack = stacks()
    other = Flask("other")
    other.config["SQLALCHEMY_DATABASE_URI"] = stack.app.config["SQLALCHEMY_DATABASE_URI"]
    stack.db.init_app(other)
    stack.tenancy.init_app(other)
    with pytest.raises(TenancyError, match="several apps"):
        with tenant_session(stack.tenancy, two_tenants[0]):
            pass
    with other.app_context():
        with tenant_session(stack.tenancy, two_tenants[0]) as session:
            assert session.scalars(select(stack.Note.body)).all() == []
        stack.db.engine.dispose()


def test_an_existing_installation_is_used(pg_url, two_tenants):
    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)
    installation = sa_tenancy.install(db.session, strategy="translate_map", require=True)
    with pytest.raises(TenancyError, match="already has an installation"):
        FlaskTenancy(db, strategy="search_path")
    tenancy: FlaskTenancy[Any] = FlaskTenancy(db.session)  # db.session stands for db
    assert tenancy.db is db
    assert sa_tenancy.installation_of(db.session) is installation
    with pytest.raises(TenancyError, match="already serves this Flask-SQLAlchemy db"):
        FlaskTenancy(db)


def test_default_install_is_auto_and_requires_a_tenant(stacks):
    installation = sa_tenancy.installation_of(stacks(None).db.session)
    assert installation is not None and installation.require
    assert getattr(installation.strategy, "name", None) == "auto"


def test_misuse_is_refused_with_what_to_do(pg_engine):
    from sqlalchemy.orm import scoped_session

    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory)
    with pytest.raises(TenancyError, match="pass the sessionmaker"):
        FlaskTenancy(scoped_session(factory))
    with pytest.raises(TenancyError, match="strategy= is for a Flask-SQLAlchemy db only"):
        FlaskTenancy(factory, strategy="search_path")
    sa_tenancy.uninstall(factory)


def test_flask_sqlalchemy_is_not_imported_by_the_integration():
    import subprocess
    import sys

    code = (
        "import sys, sa_tenancy.integrations.flask, sa_tenancy.integrations.workers;"
        "print('flask_sqlalchemy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# -- a real server -------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["search_path", "translate_map", "sqlite"])
def test_example_under_flask_run_with_concurrent_requests(
    strategy, pg_url, pg_example_tenants, tmp_path
):
    """``examples/flask_sqlalchemy_app.py`` under ``flask run`` (threaded), 8 clients at once:
    on PostgreSQL with each strategy, and with its defaults (SQLite files in ``demo_data/``)."""
    import sys

    import httpx

    unset = ("DATABASE_URL", "TENANTS", "TENANCY_STRATEGY")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PYTHONPATH"] = str(ROOT)
    tenants = ["acme", "globex"]
    if strategy != "sqlite":
        tenants = pg_example_tenants
        env.update(DATABASE_URL=pg_url, TENANTS=",".join(tenants), TENANCY_STRATEGY=strategy)
    app = [sys.executable, "-m", "flask", "--app", "examples.flask_sqlalchemy_app", "run"]
    command = lambda port: [*app, "--host", "127.0.0.1", "--port", str(port)]  # noqa: E731
    log = tmp_path / "server.log"
    with serve(command, env, log, name="flask", cwd=tmp_path, inherit=False) as base:
        check_served(base, tenants, per_tenant=6)
        one = httpx.get(f"{base}/notes/1", headers={"X-Tenant": tenants[0]})
        assert one.json() == {"id": 1, "body": one.json()["body"]}
    if strategy == "sqlite":
        assert {p.name for p in (tmp_path / "demo_data").iterdir()} == {
            "app.db",
            "acme.db",
            "globex.db",
        }
