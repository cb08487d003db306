"""Flask-SQLAlchemy example: the usual ``db`` and ``db.Model``, a schema per tenant (``X-Tenant``).

Views use ``db.session``, ``Note.query`` and ``db.get_or_404`` as in any Flask-SQLAlchemy app;
``FlaskTenancy(db)`` makes them serve the request's tenant. Run it (from the repository root):
``flask --app examples.flask_sqlalchemy_app run``. Then::

    curl -X POST localhost:5000/notes -H 'X-Tenant: acme' -H 'Content-Type: application/json' \\
         -d '{"body": "hello"}'
    curl localhost:5000/notes -H 'X-Tenant: acme'

Configuration: ``DATABASE_URL`` (default: SQLite files in ``demo_data/``), ``TENANTS`` (default
``acme,globex``, created at start-up if missing), ``TENANCY_STRATEGY`` (default ``auto``).
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask
from flask import request
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy import make_url
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import Session
from sqlalchemy.orm import mapped_column

import sa_tenancy
from sa_tenancy.integrations.flask import FlaskTenancy

DEFAULT_URL = "sqlite:///demo_data/app.db"


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
tenancy: FlaskTenancy[Session] = FlaskTenancy(db, strategy=os.environ.get("TENANCY_STRATEGY"))


class Note(db.Model):  # type: ignore[name-defined,misc]  # no schema: a tenant table
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


def as_dict(note: Note) -> dict[str, object]:
    return {"id": note.id, "body": note.body}


def create_app() -> Flask:
    """The app, its tenants provisioned (safe to run at every start)."""
    url = make_url(os.environ.get("DATABASE_URL", DEFAULT_URL))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        # Flask-SQLAlchemy reads a relative SQLite path as relative to the instance folder;
        # keep the demo's files where the other examples put them.
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        url = url.set(database=str(Path(url.database).resolve()))
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url.render_as_string(hide_password=False)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    db.init_app(app)
    tenancy.init_app(app)
    tenants = os.environ.get("TENANTS", "acme,globex").split(",")
    with app.app_context():
        for tenant in filter(None, (t.strip() for t in tenants)):
            sa_tenancy.create_tenant(db.engine, tenant, metadata=db.metadata, exist_ok=True)

    @app.post("/notes")
    def create_note() -> ResponseReturnValue:
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
            return {"detail": 'send a JSON object {"body": "..."}'}, 422
        note = Note(body=payload["body"])
        db.session.add(note)
        db.session.commit()
        return as_dict(note), 201

    @app.get("/notes")
    def list_notes() -> ResponseReturnValue:
        return [as_dict(n) for n in Note.query.order_by(Note.id)]

    @app.get("/notes/<int:note_id>")
    def get_note(note_id: int) -> ResponseReturnValue:
        return as_dict(db.get_or_404(Note, note_id))

    return app


app = create_app()
