"""sa_tenancy.citus on plain PostgreSQL: shared tables work, Citus-only calls say so clearly.

Citus itself is not installable in CI; on a Citus coordinator (``SA_TENANCY_TEST_PG_URL``, the
plugin then runs in place) the tests that need plain PostgreSQL are skipped and the ones that
need Citus run instead.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import Column
from sqlalchemy import ForeignKey
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Engine

import sa_tenancy
from sa_tenancy import _citus
from sa_tenancy.testing import unique_name

from ._alembic_env import run_cli


def _is_citus(engine: Engine) -> bool:
    return _citus.server_of(engine).citus


@pytest.fixture
def plain_pg(pg_engine: Engine) -> Engine:
    if _is_citus(pg_engine):
        pytest.skip("checks plain PostgreSQL behaviour; this database is a Citus coordinator")
    return pg_engine


@pytest.fixture
def shared_schema(pg_engine: Engine) -> Iterator[str]:
    name = unique_name("shared")
    yield name
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _models(shared: str) -> MetaData:
    meta = MetaData()
    Table("plans", meta, Column("id", Integer, primary_key=True), Column("name", String(20)),
          schema=shared)  # fmt: skip
    Table("features", meta, Column("id", Integer, primary_key=True),
          Column("plan_id", ForeignKey(f"{shared}.plans.id")), schema=shared)  # fmt: skip
    Table("accounts", meta, Column("id", Integer, primary_key=True),
          Column("plan_id", ForeignKey(f"{shared}.plans.id"), nullable=False))  # fmt: skip
    return meta


def test_shared_tables_are_made_once_and_tenants_reference_them(pg_engine, shared_schema):
    meta = _models(shared_schema)
    made = sa_tenancy.create_shared_tables(pg_engine, meta, schema=shared_schema)
    assert made == [f"{shared_schema}.plans", f"{shared_schema}.features"]
    with pg_engine.begin() as conn:
        conn.execute(text(f"INSERT INTO \"{shared_schema}\".plans (id, name) VALUES (1, 'pro')"))
    # Idempotent: a second call keeps the tables and their rows.
    assert sa_tenancy.create_shared_tables(pg_engine, meta, schema=shared_schema) == made
    tenant = unique_name("acct")
    sa_tenancy.create_tenant(pg_engine, tenant, metadata=meta)
    try:
        with pg_engine.begin() as conn:
            tables = conn.execute(
                text("SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(:s) "
                     "AND relkind = 'r' ORDER BY 1"), {"s": tenant},
            ).scalars().all()  # fmt: skip
            assert tables == ["accounts"]  # shared tables are not copied into tenants
            conn.execute(text(f'INSERT INTO "{tenant}".accounts (plan_id) VALUES (1)'))
        with pytest.raises(sa_exc.IntegrityError), pg_engine.begin() as conn:
            conn.execute(text(f'INSERT INTO "{tenant}".accounts (plan_id) VALUES (2)'))
        if _is_citus(pg_engine):
            with pg_engine.connect() as conn:
                kinds = conn.execute(
                    text("SELECT partmethod FROM pg_dist_partition WHERE logicalrelid::text "
                         "LIKE :p"), {"p": f"{shared_schema}.%"},
                ).scalars().all()  # fmt: skip
            assert kinds == ["n", "n"]  # reference tables
    finally:
        sa_tenancy.drop_tenant(pg_engine, tenant)


@pytest.mark.parametrize("bad", ["", "pg_x", "public", "sa_tenancy", "sa_spare_0a", "a" * 64, 7])
def test_shared_schema_names_are_validated_before_any_sql(bad):
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(sa_tenancy.InvalidSchemaName):
        sa_tenancy.create_shared_tables(engine, MetaData(), schema=bad)


def test_a_tenant_is_not_a_shared_schema(pg_engine):
    tenant = unique_name("acct")
    sa_tenancy.create_tenant(pg_engine, tenant)
    try:
        with pytest.raises(sa_tenancy.TenancyError, match="not a shared schema"):
            sa_tenancy.create_shared_tables(pg_engine, MetaData(), schema=tenant)
    finally:
        sa_tenancy.drop_tenant(pg_engine, tenant)


def test_placement_and_move_need_citus(plain_pg):
    tenant = unique_name("acct")
    sa_tenancy.create_tenant(plain_pg, tenant)
    try:
        with pytest.raises(sa_tenancy.CitusRequired, match="needs Citus"):
            sa_tenancy.tenant_placement(plain_pg)
        with pytest.raises(sa_tenancy.CitusRequired, match="needs Citus"):
            sa_tenancy.move_tenant(plain_pg, tenant, "worker-2", 5432)
    finally:
        sa_tenancy.drop_tenant(plain_pg, tenant)
    assert issubclass(sa_tenancy.CitusRequired, sa_tenancy.TenancyError)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("Bad-Name", "w", 5432), "schema name"),
        (("acme", "", 5432), "node_host"),
        (("acme", "w", 0), "not a TCP port"),
        (("acme", "w", "5432"), "must be an int"),
        (("acme", "w", True), "must be an int"),
    ],
)
def test_move_checks_its_input_before_any_sql(args, match):
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(sa_tenancy.InvalidSchemaName, match=match):
        sa_tenancy.move_tenant(engine, *args)
    with pytest.raises(sa_tenancy.InvalidSchemaName, match="transfer_mode"):
        sa_tenancy.move_tenant(engine, "acme", "w", 5432, transfer_mode="fast")


def test_citus_is_detected_once_per_engine_object(pg_url):
    engine = create_engine(pg_url)
    asked: list[str] = []

    from sqlalchemy import event

    @event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, *args):
        if "pg_extension" in statement:
            asked.append(statement)

    first = _citus.server_of(engine)
    assert _citus.server_of(engine) is first
    with engine.connect() as conn:
        assert _citus.server_of(conn) is first
    assert len(asked) == 1
    # The answer lives with the engine, not at its address: a new engine asks again.
    engine.dispose()
    del engine, conn
    gc.collect()
    other = create_engine(pg_url)
    try:
        assert other not in _citus._SERVERS
        assert _citus.server_of(other) == first
    finally:
        other.dispose()


def test_cli_placement_and_move_on_plain_postgresql(plain_pg, pg_url):
    tenant = unique_name("acct")
    sa_tenancy.create_tenant(plain_pg, tenant)
    try:
        result = run_cli(["placement", "--json"], url=pg_url)
        assert result.returncode == 1 and "needs Citus" in result.stderr, result.stderr
        result = run_cli(["move", tenant, "worker-2:5432"], url=pg_url)
        assert result.returncode == 1 and "needs Citus" in result.stderr, result.stderr
    finally:
        sa_tenancy.drop_tenant(plain_pg, tenant)


@pytest.mark.parametrize("node", ["worker", "worker:", ":5432", "worker:port", "w:70000"])
def test_cli_move_refuses_a_bad_node_with_exit_2(node):
    result = run_cli(["move", "acme", node], url="postgresql+psycopg://nobody@127.0.0.1:1/x")
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr


def test_cli_move_and_placement_help():
    result = run_cli(["move", "--help"], url=None)
    assert result.returncode == 0
    assert "citus_schema_move" in result.stdout and "block_writes" in result.stdout
    result = run_cli(["placement", "--help"], url=None)
    assert result.returncode == 0 and "--json" in result.stdout
    result = run_cli(["move", "acme", "w:1", "--transfer-mode", "fast"], url=None)
    assert result.returncode == 2


def test_own_server_tests_carry_the_registered_marker(pytestconfig):
    """A run in place on a Citus coordinator deselects them with -m "not own_server"."""
    from . import test_stress

    assert any(m.startswith("own_server:") for m in pytestconfig.getini("markers"))
    assert "own_server" in {m.name for m in test_stress.pytestmark}


# -- on a Citus coordinator only --------------------------------------------------------------


@pytest.fixture
def citus(pg_engine: Engine) -> Engine:
    if not _is_citus(pg_engine):
        pytest.fail("needs a Citus coordinator: mark the test citus (see docs/citus.md)")
    return pg_engine


@pytest.mark.citus  # deselected by the plugin unless the configured server is a coordinator
def test_on_citus_tenants_are_distributed_and_placed(citus):
    empty, full = unique_name("acct"), unique_name("acct")
    meta = MetaData()
    Table("items", meta, Column("id", Integer, primary_key=True))
    sa_tenancy.create_tenant(citus, empty)
    sa_tenancy.create_tenant(citus, full, metadata=meta)
    try:
        placed = sa_tenancy.tenant_placement(citus)
        assert placed[empty] is None
        node = placed[full]
        assert node is not None
        with pytest.raises(sa_tenancy.TenancyError, match="no shards"):
            sa_tenancy.move_tenant(citus, empty, *node)
        with citus.connect() as conn:
            ledger_distributed = conn.execute(
                text("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = "
                     "'sa_tenancy.tenant_versions'::regclass")
            ).scalar()  # fmt: skip
        assert ledger_distributed == 0  # a plain coordinator table
        result = run_cli(["placement", "--json"], url=str(citus.url.render_as_string(False)))
        assert result.returncode == 0
        assert json.loads(result.stdout)[empty] is None
    finally:
        sa_tenancy.drop_tenant(citus, empty)
        sa_tenancy.drop_tenant(citus, full)
