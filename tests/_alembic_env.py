"""Helpers for the lifecycle, migration and CLI tests: a scratch database and an Alembic env.

Fleet migrations act on every tenant of a database, so each test that runs one gets a database
of its own (made from the run's scratch database server, dropped afterwards): tenants made by
other tests can never be migrated, counted or dropped by it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy import make_url
from sqlalchemy import text
from sqlalchemy.engine import Engine

from sa_tenancy.testing import unique_name

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "sa_tenancy.cli"]
#: The installed console scripts. Unlike ``python -m``, they do not put the working directory
#: on ``sys.path``: what a user's ``alembic`` or ``sa-tenancy`` command really sees.
ALEMBIC_SCRIPT = Path(sys.executable).with_name("alembic")
SA_TENANCY_SCRIPT = Path(sys.executable).with_name("sa-tenancy")

#: A ``models.py`` whose ``items`` matches what ``R1`` creates; ``{columns}`` adds more.
MODELS = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


items = sa.Table(
    "items",
    Base.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text),{columns}
)
"""

R1 = """
import sqlalchemy as sa
from alembic import op

revision = "r1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text),
    )


def downgrade():
    op.drop_table("items")
"""

# One ALTER per tenant, plus a row in a shared log so tests can count how often each tenant
# was migrated, and an optional pause so runs can overlap or be interrupted.
R2 = """
import os

import sqlalchemy as sa
from alembic import op

revision = "r2"
down_revision = "r1"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("items", sa.Column("price", sa.Integer))
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT to_regclass('public.migration_log')")).scalar():
        op.execute("INSERT INTO public.migration_log (schema_name) VALUES (current_schema())")
    pause = float(os.environ.get("R2_PAUSE", "0"))
    if pause:
        op.execute(sa.text("SELECT pg_sleep(:s)").bindparams(s=pause))


def downgrade():
    op.drop_column("items", "price")
"""


def make_database(server_url: str) -> str:
    """Create an empty database next to ``server_url``'s and return its URL.

    On a Citus coordinator this is a plain PostgreSQL database on the coordinator (no citus
    extension; ``CREATE DATABASE`` is not propagated to the workers): fleet tests that use it
    check the fleet logic there, while the lifecycle tests run in the Citus database itself.
    """
    name = unique_name("fleet")
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, url: str) -> None:
    name = make_url(url).database
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def fleet_url(pg_url: str) -> Iterator[str]:
    """A database of this test's own, with ``public.migration_log``."""
    url = make_database(pg_url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE public.migration_log (id serial PRIMARY KEY, schema_name text NOT NULL)"
        )
    engine.dispose()
    try:
        yield url
    finally:
        drop_database(pg_url, url)


@pytest.fixture
def fleet_engine(fleet_url: str) -> Iterator[Engine]:
    engine = create_engine(fleet_url, pool_size=2, max_overflow=2)
    yield engine
    engine.dispose()


def write_env(directory: Path, *, revisions: tuple[str, ...] = ("r1",)) -> Path:
    """Write an Alembic environment made by ``sa-tenancy alembic-init`` plus our revisions."""
    result = run_cli(["alembic-init", str(directory)], url=None)
    assert result.returncode == 0, result.stderr
    add_revisions(directory, revisions)
    return directory / "alembic.ini"


def add_revisions(directory: Path, revisions: tuple[str, ...]) -> None:
    sources = {"r1": R1, "r2": R2}
    for name in revisions:
        (directory / "versions" / f"{name}.py").write_text(textwrap.dedent(sources[name]))


def use_models(directory: Path, columns: str = "") -> None:
    """Write ``directory/models.py`` and point the generated ``env.py`` at its metadata."""
    (directory / "models.py").write_text(textwrap.dedent(MODELS).format(columns=columns))
    env = directory / "env.py"
    source = env.read_text()
    if "from models import Base" not in source:
        source = source.replace(
            "target_metadata = None", "from models import Base\n\ntarget_metadata = Base.metadata"
        )
        assert "from models import Base" in source
        env.write_text(source)


def edit_env(directory: Path, old: str, new: str) -> None:
    """Change one line of the generated ``env.py``, as a user would."""
    env = directory / "env.py"
    source = env.read_text()
    assert old in source, f"{old!r} not in the generated env.py"
    env.write_text(source.replace(old, new))


def run_script(
    script: Path, args: list[str], *, url: str, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run an installed console script from ``cwd``, as a user in their project would."""
    assert script.exists(), f"{script} is not installed: pip install -e '.[test]'"
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
    environ["DATABASE_URL"] = url
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, env=environ, cwd=cwd,
        timeout=timeout,
    )  # fmt: skip


def run_cli(
    args: list[str], *, url: str | None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sa_tenancy.cli`` in a subprocess, as a user or a deploy script would."""
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if url is not None:
        environ["DATABASE_URL"] = url
    environ.update(env or {})
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=environ, cwd=ROOT, timeout=timeout
    )


def migration_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT schema_name, count(*) FROM public.migration_log GROUP BY schema_name")
        )
        return {r[0]: r[1] for r in rows}


def ledger(engine: Engine) -> dict[str, str | None]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT schema_name, revision FROM sa_tenancy.tenant_versions"))
        return {r[0]: r[1] for r in rows}


def make_fleet(engine: Engine, ini: Path, count: int, prefix: str = "f") -> list[str]:
    """``count`` tenants at the env's current head: one built by migrations, the rest cloned."""
    import sa_tenancy

    names = [f"{prefix}_{i:04d}" for i in range(count)]
    sa_tenancy.create_tenant(engine, names[0], alembic_config=ini)
    for name in names[1:]:
        sa_tenancy.clone_tenant(engine, names[0], name)
    return names
