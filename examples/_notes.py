"""What the example apps share: the Note model, the engine, and the tenants provisioned at start.

Configuration comes from the environment:

``DATABASE_URL``
    default ``sqlite:///demo_data/app.db``: tenants are SQLite files beside it
    (``demo_data/acme.db``), so the apps run without a server.
``TENANTS``
    comma-separated tenant names, created at start-up if missing (default ``acme,globex``;
    empty for none).
``TENANCY_STRATEGY``
    ``auto`` (default: ``search_path`` on PostgreSQL, tenant files on SQLite), ``search_path``
    or ``translate_map``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import String
from sqlalchemy import create_engine
from sqlalchemy import make_url
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import Session
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import sessionmaker

import sa_tenancy

DEFAULT_URL = "sqlite:///demo_data/app.db"
DEFAULT_TENANTS = "acme,globex"


class Base(DeclarativeBase):
    pass


class Note(Base):  # no schema: a tenant table
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


@dataclass
class Demo:
    """One configured database: its engine, the tenant session factory and the tenants."""

    engine: Engine
    SessionLocal: sessionmaker[Session]
    tenants: list[str]

    def provision(self) -> None:
        """Create the configured tenants that do not exist yet (safe to run at every start)."""
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        for tenant in self.tenants:
            sa_tenancy.create_tenant(self.engine, tenant, metadata=Base.metadata, exist_ok=True)


def setting(value: str | None, name: str, default: str) -> str:
    return value if value is not None else os.environ.get(name, default)


def configure(
    *,
    database_url: str | None = None,
    tenants: str | None = None,
    strategy: str | None = None,
) -> Demo:
    """Engine and session factory from the arguments, else the environment, else the defaults.

    Nothing is connected or created here; :meth:`Demo.provision` does that at start-up.
    """
    url = make_url(setting(database_url, "DATABASE_URL", DEFAULT_URL))
    engine = create_engine(url, pool_pre_ping=True)
    SessionLocal = sessionmaker(engine)
    sa_tenancy.install(
        SessionLocal, strategy=setting(strategy, "TENANCY_STRATEGY", "auto"), require=True
    )
    names = [t.strip() for t in setting(tenants, "TENANTS", DEFAULT_TENANTS).split(",")]
    return Demo(engine, SessionLocal, [t for t in names if t])


def as_dict(note: Note) -> dict[str, object]:
    return {"id": note.id, "body": note.body}


def all_notes(session: Session) -> list[dict[str, object]]:
    return [as_dict(n) for n in session.scalars(select(Note).order_by(Note.id))]


def add_note(session: Session, body: str) -> dict[str, object]:
    note = Note(body=body)
    session.add(note)
    session.commit()
    return as_dict(note)
