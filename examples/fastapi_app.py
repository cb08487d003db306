"""FastAPI example: notes per tenant, the tenant named by the ``X-Tenant`` header.

Run it (from the repository root): ``uvicorn examples.fastapi_app:app``. Then::

    curl -X POST localhost:8000/notes -H 'X-Tenant: acme' -H 'Content-Type: application/json' \\
         -d '{"body": "hello"}'
    curl localhost:8000/notes -H 'X-Tenant: acme'

Configuration (``DATABASE_URL``, ``TENANTS``, ``TENANCY_STRATEGY``): see ``examples/_notes.py``.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at
# runtime, and TenantSession is local to create_app(), where a string annotation cannot find it.

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy.orm import Session

from examples._notes import add_note
from examples._notes import all_notes
from examples._notes import configure
from sa_tenancy.integrations.fastapi import session_dependency


class NoteIn(BaseModel):
    body: str


class NoteOut(BaseModel):
    id: int
    body: str


def create_app(
    *, database_url: str | None = None, tenants: str | None = None, strategy: str | None = None
) -> FastAPI:
    """The app; arguments override the environment (tests use them)."""
    demo = configure(database_url=database_url, tenants=tenants, strategy=strategy)
    TenantSession = Annotated[Session, Depends(session_dependency(demo.SessionLocal))]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        demo.provision()
        yield
        demo.engine.dispose()

    app = FastAPI(title="sa_tenancy notes (FastAPI)", lifespan=lifespan)

    @app.post("/notes", status_code=201, response_model=NoteOut)
    def create_note(note: NoteIn, session: TenantSession) -> dict[str, object]:
        return add_note(session, note.body)

    @app.get("/notes", response_model=list[NoteOut])
    def list_notes(session: TenantSession) -> list[dict[str, object]]:
        return all_notes(session)

    return app


app = create_app()
