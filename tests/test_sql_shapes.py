"""The SQL the library sends has shapes Citus accepts, checked on plain PostgreSQL.

Measured on Citus 13.2.2 (see docs/citus.md), these shapes fail there while plain PostgreSQL
accepts them, so nothing but a check of the statements themselves keeps them out:

* several statements in one message (Citus: "cannot insert multiple commands into a prepared
  statement" for ``CREATE INDEX`` / ``ADD FOREIGN KEY``);
* a volatile or stable function in ``ON CONFLICT ... DO UPDATE SET`` (``updated_at = now()``);
* ``ALTER SEQUENCE ... OWNED BY`` ("Altering a distributed sequence is currently not
  supported");
* a session-state call (``set_config``, ``current_schema()``, advisory locks) in the same
  statement as a read of a tenant table: Citus routes the whole statement to the tenant's
  worker, so the call changes (or reads) the worker's session instead of the caller's.

A ``before_cursor_execute`` log records every statement across create (from metadata and from
migrations), clone (with and without rows), the reservoir, claim, rename, adopt, migrations
(``upgrade_tenant`` and the fleet worker, run in this process), shared tables and drops, in a
database of the test's own (so the ledger is created from scratch), and each is checked.

The one deliberate multi-statement message, psycopg's ``BEGIN; SET LOCAL search_path ...;
SELECT current_schema()`` (:mod:`sa_tenancy._psycopg`), is a simple-query message sent below
the cursor; it runs on the coordinator and is correct on Citus (measured). It is not lifecycle
DDL and is excluded explicitly by :func:`_excluded`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import Table
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.engine import Engine

import sa_tenancy
from sa_tenancy import _citus
from sa_tenancy import _fleet
from sa_tenancy import _lifecycle_pg
from sa_tenancy._alembic import load_config
from sa_tenancy.migrate import upgrade_tenant
from sa_tenancy.testing import unique_name

from ._alembic_env import add_revisions
from ._alembic_env import drop_database
from ._alembic_env import make_database
from ._alembic_env import write_env
from .models import rich_metadata

# -- a statement splitter that knows PostgreSQL's quoting ------------------------------------

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def _after_quoted(sql: str, i: int, quote: str, *, escaped: bool) -> int:
    """The index just past the literal or identifier opened by ``quote`` at ``i``.

    A doubled quote stands for itself; with ``escaped`` (``E'...'``) a backslash escapes the
    next character.
    """
    n = len(sql)
    i += 1
    while i < n:
        if escaped and sql[i] == "\\":
            i += 2
            continue
        if sql[i] == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
                continue
            break
        i += 1
    return i + 1


def split_statements(sql: str) -> list[str]:
    """``sql`` cut at each ``;`` that is outside literals, identifiers, dollar quotes, comments.

    Knows ``'...'`` (``''`` inside), ``E'...'`` (backslash escapes), ``"..."`` (``""`` inside),
    ``$tag$...$tag$``, ``-- ...`` and ``/* ... */`` (nested). Empty pieces are dropped.
    """
    pieces: list[str] = []
    start = i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == "'":
            escaped = i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
            i = _after_quoted(sql, i, "'", escaped=escaped)
        elif c == '"':
            i = _after_quoted(sql, i, '"', escaped=False)
        elif c == "$" and (m := _DOLLAR.match(sql, i)) and not (i > 0 and sql[i - 1].isalnum()):
            end = sql.find(m.group(0), m.end())
            i = n if end < 0 else end + len(m.group(0))
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == ";":
            pieces.append(sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    pieces.append(sql[start:])
    return [p.strip() for p in pieces if p.strip()]


def _strip_literals(sql: str) -> str:
    """``sql`` with every string literal emptied (``''``): patterns then match code only."""
    return re.sub(r"(?:[eE])?'(?:[^'\\]|''|\\.)*'", "''", sql)


_VOLATILE_IN_SET = re.compile(
    r"\b(now\s*\(|current_timestamp|clock_timestamp|statement_timestamp|"
    r"transaction_timestamp|localtimestamp|random\s*\(|nextval\s*\(|gen_random_uuid)",
    re.IGNORECASE,
)
_SESSION_STATE = re.compile(
    r"\b(set_config|current_schema|pg_advisory\w*|pg_try_advisory\w*)\s*\(", re.IGNORECASE
)
_RELATION = re.compile(
    r"\b(?:FROM|JOIN)\s+(?!\()((?:\"(?:[^\"]|\"\")*\"|[\w$]+)(?:\.(?:\"(?:[^\"]|\"\")*\"|[\w$]+))?)",
    re.IGNORECASE,
)
#: What a statement with a session-state call may read: catalogs, the ledger (a plain table on
#: the coordinator), Citus metadata, and subqueries.
_ALLOWED_WITH_STATE = re.compile(
    r"^(pg_\w+|pg_catalog\.\w+|information_schema\.\w+|sa_tenancy\.\w+|unnest|LATERAL|ONLY)$",
    re.IGNORECASE,
)


def problems_of(statement: str) -> list[str]:
    """What would fail on Citus in this one message (empty if nothing)."""
    found = []
    pieces = split_statements(statement)
    if len(pieces) > 1:
        found.append(f"{len(pieces)} statements in one message")
    code = _strip_literals(statement)
    # (not DROP OWNED BY / REASSIGN OWNED BY, which are about roles)
    if re.search(r"\bSEQUENCE\b.*?\bOWNED\s+BY\b", code, re.IGNORECASE | re.DOTALL):
        found.append("ALTER SEQUENCE ... OWNED BY")
    setting = re.search(r"\bDO\s+UPDATE\s+SET\b(.*?)(\bRETURNING\b|\bWHERE\b|$)", code,
                        re.IGNORECASE | re.DOTALL)  # fmt: skip
    if setting and _VOLATILE_IN_SET.search(setting.group(1)):
        found.append("a non-immutable function in DO UPDATE SET")
    if _SESSION_STATE.search(code):
        # Drop "x FROM y" inside function calls such as substring(a FROM b) / EXTRACT(...).
        relations = [r for r in _RELATION.findall(code) if not r.startswith(("%(", ":"))]
        tenant_reads = [r for r in relations if not _ALLOWED_WITH_STATE.match(r)]
        if tenant_reads:
            found.append(f"a session-state call with a read of {', '.join(tenant_reads)}")
    return found


def _excluded(statement: str) -> bool:
    """psycopg's one-message BEGIN with the tenant's path: deliberate, correct on Citus."""
    return bool(re.match(r"\s*BEGIN\b[^;]*;(\s*DISCARD TEMP;)?\s*SET LOCAL search_path\b",
                         statement))  # fmt: skip


# -- the checker itself can fail --------------------------------------------------------------


def test_splitter_respects_quotes_identifiers_dollar_quotes_and_comments():
    assert split_statements("SELECT 1") == ["SELECT 1"]
    assert split_statements("SELECT 1; SELECT 2;") == ["SELECT 1", "SELECT 2"]
    assert len(split_statements("COMMENT ON SCHEMA \"a;b\" IS 'x;y''; z'")) == 1
    assert len(split_statements("SELECT E'it\\'s; fine'")) == 1
    assert len(split_statements("DO $body$ BEGIN PERFORM 1; PERFORM 2; END $body$")) == 1
    assert len(split_statements("SELECT $$;$$, 1 -- a; comment\n")) == 1
    assert len(split_statements("SELECT /* a; /* nested; */ b; */ 1")) == 1
    assert len(split_statements("SELECT %(x)s; SELECT 2")) == 2
    assert len(split_statements("SELECT 'a'';'; SELECT 'b'")) == 2


def test_the_checker_catches_the_shapes_that_failed_on_citus():
    old_ledger_ddl = (
        "CREATE SCHEMA IF NOT EXISTS sa_tenancy;\nCREATE TABLE IF NOT EXISTS "
        "sa_tenancy.tenant_versions (schema_name text PRIMARY KEY);\nCREATE INDEX IF NOT EXISTS "
        "x ON sa_tenancy.tenant_versions (schema_name)"
    )
    assert problems_of(old_ledger_ddl) == ["3 statements in one message"]
    old_upsert = (
        "INSERT INTO sa_tenancy.tenant_versions (schema_name, updated_at) VALUES (%(s)s, now()) "
        "ON CONFLICT (schema_name) DO UPDATE SET revision = EXCLUDED.revision, updated_at = now()"
    )
    assert problems_of(old_upsert) == ["a non-immutable function in DO UPDATE SET"]
    assert (
        problems_of(old_upsert.replace("updated_at = now()", "updated_at = EXCLUDED.updated_at"))
        == []
    )
    assert problems_of('ALTER SEQUENCE "s" OWNED BY "t"."id"') == ["ALTER SEQUENCE ... OWNED BY"]
    assert problems_of("COMMENT ON SCHEMA x IS 'owned by nobody'") == []
    old_leave = (
        "SELECT set_config('search_path', %(p)s, true), "
        'ARRAY(SELECT version_num FROM "acme".alembic_version)'
    )
    assert problems_of(old_leave) == ['a session-state call with a read of "acme".alembic_version']
    fine = (
        "SELECT obj_description(to_regnamespace(quote_ident(%(s)s)), 'pg_namespace'), "
        "pg_try_advisory_xact_lock(1, 2)"
    )
    assert problems_of(fine) == []
    assert problems_of("SELECT pg_advisory_xact_lock(1) FROM pg_class") == []
    assert _excluded('BEGIN; DISCARD TEMP; SET LOCAL search_path TO "a", pg_temp; SELECT 1')
    assert not _excluded("BEGIN; CREATE INDEX i ON t (a)")


# -- the statement log ------------------------------------------------------------------------


def _log(engine: Engine, into: list[str], params: list[Any] | None = None) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        into.append(statement)
        if params is not None:
            params.append(parameters)


@pytest.fixture
def own_database(pg_url: str) -> Iterator[str]:
    """A database of the test's own: the ledger does not exist yet, so its DDL is logged.

    On a Citus coordinator it is a plain PostgreSQL database there (no citus extension, not
    propagated to the workers): the statements checked are the same, which is the point.
    """
    url = make_database(pg_url)
    try:
        yield url
    finally:
        drop_database(pg_url, url)


def test_every_statement_the_library_sends_has_a_citus_shape(own_database, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    engine = create_engine(own_database)
    sent: list[str] = []
    values: list[Any] = []
    _log(engine, sent, values)
    rich, built, rows, bare = (unique_name("shape") for _ in range(4))
    with_role, role_renamed = unique_name("shape"), unique_name("shape")
    shared = MetaData()
    Table("plans", shared, Column("id", Integer, primary_key=True), schema="shared")
    try:
        sa_tenancy.create_shared_tables(engine, shared)
        sa_tenancy.create_tenant(engine, rich, metadata=rich_metadata())
        sa_tenancy.create_tenant(engine, built, alembic_config=ini)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO \"{rich}\".owners (name) VALUES ('a'), ('b')")
            conn.exec_driver_sql(f"INSERT INTO \"{rich}\".big (v) VALUES ('a')")
        sa_tenancy.clone_tenant(engine, rich, rows, data=True)
        sa_tenancy.clone_tenant(engine, built, bare)
        sa_tenancy.fill_reservoir(engine, 1, metadata=rich_metadata())
        sa_tenancy.fill_reservoir(engine, 1, template=built)
        claimed, renamed = unique_name("shape"), unique_name("shape")
        sa_tenancy.claim_tenant(engine, claimed)
        sa_tenancy.rename_tenant(engine, bare, renamed)
        legacy, adopted = unique_name("legacy"), unique_name("shape")
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{legacy}"')
            conn.exec_driver_sql(f'CREATE TABLE "{legacy}".t (id serial PRIMARY KEY)')
        sa_tenancy.adopt_schema(engine, legacy, as_tenant=adopted)
        with engine.begin() as conn:  # this database's own public: nobody else uses it
            conn.exec_driver_sql("CREATE TABLE public.legacy_items (id serial PRIMARY KEY)")
            conn.exec_driver_sql("CREATE INDEX legacy_items_ix ON public.legacy_items (id)")
        sa_tenancy.adopt_schema(engine, "public", as_tenant=unique_name("shape"))
        add_revisions(tmp_path, ("r2",))
        with engine.begin() as conn:
            assert upgrade_tenant(conn, built, ini) == "r2"
        _fleet_worker_migrates(own_database, ini, [renamed, claimed], sent)
        sa_tenancy.tenant_status(engine, config=ini)
        sa_tenancy.drop_tenant(engine, built)
        _lifecycle_pg.drop(engine, rich, batch_size=2, at_once=1)  # the batched path
        # tenant_roles: the role's DDL and grants, created, repaired, renamed, dropped.
        sa_tenancy.create_tenant(engine, with_role, metadata=rich_metadata(), tenant_roles=True)
        sa_tenancy.sync_tenant_roles(engine, tenants=[with_role])
        sa_tenancy.rename_tenant(engine, with_role, role_renamed, tenant_roles=True)
        sa_tenancy.drop_tenant(engine, role_renamed, tenant_roles=True)
    finally:
        with engine.begin() as conn:  # roles are cluster-wide: never leave one behind
            for name in (with_role, role_renamed):
                role = sa_tenancy.tenant_role(name)
                if conn.exec_driver_sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'").first():
                    conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
                    conn.exec_driver_sql(f'DROP ROLE "{role}"')
        engine.dispose()

    checked = [s for s in sent if not _excluded(s)]
    assert len(checked) > 150, "the log missed the lifecycle"
    joined = "\n".join(checked)
    expected_shapes = ("CREATE TABLE IF NOT EXISTS sa_tenancy.tenant_versions", "CREATE INDEX",
                       "ALTER TABLE", "ON CONFLICT", "bigserial", "smallserial", "RENAME TO",
                       "SET SCHEMA", "DROP TABLE", "CREATE ROLE", "ALTER DEFAULT PRIVILEGES",
                       "DROP ROLE")  # fmt: skip
    for expected in expected_shapes:
        assert expected in joined, expected
    # Sharding on around each tenant's CREATE SCHEMA, off around the ledger's and shared one's.
    swaps = [v["value"] for v in values if isinstance(v, dict) and v.get("name") ==
             "citus.enable_schema_based_sharding" and "value" in v]  # fmt: skip
    assert "on" in swaps and "off" in swaps
    bad = {s: problems_of(s) for s in checked if problems_of(s)}
    assert bad == {}


def _fleet_worker_migrates(url: str, ini: Path, tenants: list[str], sent: list[str]) -> None:
    """The fleet worker's own statements, run in this process so the log sees them."""
    cfg = load_config(str(ini))
    options = dict(cfg.get_section(cfg.config_ini_section) or {})
    settings = _fleet.WorkerSettings(
        url=url, config_file=str(ini), main_options=options, ini_section=cfg.config_ini_section,
        lock_timeout="5s", statement_timeout=None,
    )  # fmt: skip
    _fleet.init_worker(settings)
    worker = _fleet._WORKER["engine"]
    _log(worker, sent)
    try:
        results = _fleet.migrate_chunk(tenants)
        assert [r.status for r in results] == ["migrated"] * len(tenants), results
    finally:
        worker.dispose()
        _fleet._WORKER.clear()


def test_the_sharding_setting_is_a_harmless_placeholder_on_plain_postgresql(pg_engine):
    """``citus.enable_schema_based_sharding`` set around CREATE SCHEMA: nothing stays behind."""
    schema = unique_name("shard")
    try:
        sa_tenancy.create_tenant(pg_engine, schema, metadata=rich_metadata())
        assert sa_tenancy.tenant_exists(pg_engine, schema)
        with pg_engine.connect() as conn:  # pool_size=1: the connection that created it
            value = conn.execute(
                text("SELECT current_setting('citus.enable_schema_based_sharding', true)")
            ).scalar()
        server = _citus.server_of(pg_engine)
        if not server.citus:
            assert value in (None, "")  # transaction-scoped: gone after the commit
    finally:
        sa_tenancy.drop_tenant(pg_engine, schema)
