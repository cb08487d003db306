"""Flask example: notes per tenant, the tenant named by the ``X-Tenant`` header.

Run it (from the repository root): ``flask --app examples.flask_app run``. Then::

    curl -X POST localhost:5000/notes -H 'X-Tenant: acme' -H 'Content-Type: application/json' \\
         -d '{"body": "hello"}'
    curl localhost:5000/notes -H 'X-Tenant: acme'

Configuration (``DATABASE_URL``, ``TENANTS``, ``TENANCY_STRATEGY``): see ``examples/_notes.py``.
"""

from __future__ import annotations

from flask import Blueprint
from flask import Flask
from flask import request
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from examples._notes import add_note
from examples._notes import all_notes
from examples._notes import configure
from sa_tenancy.integrations.flask import FlaskTenancy


def create_app(
    *, database_url: str | None = None, tenants: str | None = None, strategy: str | None = None
) -> Flask:
    """The app, its tenants provisioned; arguments override the environment (tests use them)."""
    demo = configure(database_url=database_url, tenants=tenants, strategy=strategy)
    demo.provision()
    tenancy: FlaskTenancy[Session] = FlaskTenancy(demo.SessionLocal)
    notes = Blueprint("notes", __name__)

    @notes.post("/notes")
    def create_note() -> ResponseReturnValue:
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
            return {"detail": 'send a JSON object {"body": "..."}'}, 422
        return add_note(tenancy.session, payload["body"]), 201

    @notes.get("/notes")
    def list_notes() -> ResponseReturnValue:
        return all_notes(tenancy.session)

    app = Flask(__name__)
    tenancy.init_app(app)
    app.register_blueprint(notes)
    app.extensions["notes_demo"] = demo
    return app


app = create_app()
