"""Django-ninja example, a whole Django project in one file: notes per tenant (``X-Tenant``).

Run it (from the repository root): ``python examples/ninja_app.py runserver``. Then::

    curl -X POST localhost:8000/notes -H 'X-Tenant: acme' -H 'Content-Type: application/json' \\
         -d '{"body": "hello"}'
    curl localhost:8000/notes -H 'X-Tenant: acme'

``app`` is the WSGI application, for any WSGI server. The notes live in SQLAlchemy tables; Django
only routes (no Django database is configured). Configuration (``DATABASE_URL``, ``TENANTS``,
``TENANCY_STRATEGY``): see ``examples/_notes.py``; ``ALLOWED_HOSTS`` (comma-separated) and
``DJANGO_DEBUG=1`` are read too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import django  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if not settings.configured:  # a host project (or a test run) may have configured Django
    settings.configure(
        DEBUG=os.environ.get("DJANGO_DEBUG") == "1",
        SECRET_KEY="sa-tenancy-example-not-a-secret",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver").split(","),
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
    )
    django.setup()

from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]
from ninja import NinjaAPI
from ninja import Schema
from sqlalchemy.orm import Session

from examples._notes import add_note
from examples._notes import all_notes
from examples._notes import configure
from sa_tenancy.integrations.django_ninja import NinjaTenancy


class NoteIn(Schema):
    body: str


class NoteOut(Schema):
    id: int
    body: str


def create_api(
    *,
    database_url: str | None = None,
    tenants: str | None = None,
    strategy: str | None = None,
    namespace: str = "notes",
) -> NinjaAPI:
    """The API, its tenants provisioned; arguments override the environment (tests use them)."""
    demo = configure(database_url=database_url, tenants=tenants, strategy=strategy)
    demo.provision()
    api = NinjaAPI(title="sa_tenancy notes (django-ninja)", urls_namespace=namespace)
    tenancy: NinjaTenancy[Session] = NinjaTenancy(demo.SessionLocal)
    tenancy.init_api(api)

    @api.post("/notes", response={201: NoteOut})
    def create_note(request, note: NoteIn):
        return add_note(tenancy.session(request), note.body)  # the only status: 201

    @api.get("/notes", response=list[NoteOut])
    def list_notes(request):
        return all_notes(tenancy.session(request))

    return api


api = create_api()
urlpatterns = [path("", api.urls)]
app = get_wsgi_application()

if __name__ == "__main__":
    from django.core.management import execute_from_command_line  # type: ignore[import-untyped]

    execute_from_command_line(sys.argv)
