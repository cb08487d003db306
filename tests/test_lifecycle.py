"""Tenant lifecycle on PostgreSQL: create, clone, claim, rename, drop, list."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Column
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Engine

import sa_tenancy
from sa_tenancy import _ledger
from sa_tenancy import lifecycle
from sa_tenancy.testing import unique_name

from . import _alembic_env
from ._alembic_env import ledger
from ._alembic_env import write_env
from .models import rich_metadata
from .models import tenant_metadata

fleet_url = _alembic_env.fleet_url
fleet_engine = _alembic_env.fleet_engine


def _schemas(engine: Engine, prefix: str) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"), {"p": prefix + "%"}
        )
        return {r[0] for r in rows}


def _fetch(engine: Engine, sql: str, **params: object) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def test_create_list_exists_drop(engine, cleanup):
    a, b = unique_name("life"), unique_name("life")
    cleanup += [a, b]
    for name in (a, b):
        assert sa_tenancy.create_tenant(engine, name, metadata=tenant_metadata) == name
    listed = sa_tenancy.list_tenants(engine)
    assert {a, b} <= set(listed)
    assert "public" not in listed and "sa_tenancy" not in listed
    assert sa_tenancy.tenant_exists(engine, a)
    tables = _fetch(engine, "SELECT tablename FROM pg_tables WHERE schemaname = :s", s=a)
    assert {t[0] for t in tables} == {"notes", "authors", "books"}
    assert ledger(engine)[a] is None  # recorded, with no Alembic revision
    sa_tenancy.drop_tenant(engine, a)
    assert not sa_tenancy.tenant_exists(engine, a)
    assert a not in _schemas(engine, "life_")
    assert a not in ledger(engine)
    assert b in sa_tenancy.list_tenants(engine)


def test_create_ignores_same_named_public_tables(engine, cleanup, pg_tenants):
    pg_tenants(tenant_metadata, 1)  # puts decoy notes/authors/books tables in public
    name = unique_name("life")
    cleanup.append(name)
    sa_tenancy.create_tenant(engine, name, metadata=tenant_metadata)
    tables = _fetch(engine, "SELECT tablename FROM pg_tables WHERE schemaname = :s", s=name)
    assert len(tables) == 3


def test_create_is_all_or_nothing(engine, cleanup):
    broken = MetaData()
    Table("fine", broken, Column("id", Integer, primary_key=True))
    Table("bad", broken, Column("id", Integer, primary_key=True),
          Column("x", Integer, server_default=text("no_such_function()")))  # fmt: skip
    name = unique_name("life")
    cleanup.append(name)
    with pytest.raises(sa_exc.ProgrammingError):
        sa_tenancy.create_tenant(engine, name, metadata=broken)
    assert name not in _schemas(engine, "life_")
    assert name not in ledger(engine)


def test_unmarked_reserved_and_ledger_schemas_are_never_dropped(engine, cleanup):
    plain = unique_name("plain")
    cleanup.append(plain)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{plain}"')
    with pytest.raises(sa_tenancy.UnknownSchema):
        sa_tenancy.drop_tenant(engine, plain)
    assert plain in _schemas(engine, "plain_")
    assert plain not in sa_tenancy.list_tenants(engine)
    with pytest.raises(sa_tenancy.InvalidSchemaName):
        sa_tenancy.drop_tenant(engine, "public")
    with pytest.raises(sa_tenancy.InvalidSchemaName):
        sa_tenancy.create_tenant(engine, "sa_tenancy")
    with pytest.raises(sa_tenancy.InvalidSchemaName):
        sa_tenancy.create_tenant(engine, 'x"; DROP SCHEMA public; --')


def test_create_with_alembic_stamps_head_in_the_same_transaction(engine, cleanup, tmp_path):
    ini = write_env(tmp_path, revisions=("r1", "r2"))
    meta = MetaData()
    Table("items", meta, Column("id", Integer, primary_key=True), Column("name", String),
          Column("price", Integer))  # fmt: skip
    stamped, migrated = unique_name("life"), unique_name("life")
    cleanup += [stamped, migrated]
    sa_tenancy.create_tenant(engine, stamped, metadata=meta, alembic_config=ini)
    sa_tenancy.create_tenant(engine, migrated, alembic_config=ini)  # tables from migrations
    for name in (stamped, migrated):
        assert _fetch(engine, f'SELECT version_num FROM "{name}".alembic_version') == [("r2",)]
        assert ledger(engine)[name] == "r2"
        cols = _fetch(
            engine,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = :s AND table_name = 'items' ORDER BY ordinal_position",
            s=name,
        )
        assert [c[0] for c in cols] == ["id", "name", "price"]


def test_clone_copies_structure_pointing_at_the_new_schema(engine, cleanup):
    template, copy = unique_name("tpl"), unique_name("life")
    cleanup += [template, copy]
    sa_tenancy.create_tenant(engine, template, metadata=rich_metadata(extra_tables=6))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO \"{template}\".owners (name) VALUES ('t1'), ('t2')")
    assert sa_tenancy.clone_tenant(engine, template, copy) == copy
    assert copy in sa_tenancy.list_tenants(engine)
    # Defaults, enum types and foreign keys resolve inside the copy, not the template.
    shown = _fetch(
        engine,
        "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid), format_type(a.atttypid, NULL) "
        "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid "
        "AND d.adnum = a.attnum WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 "
        "ORDER BY a.attnum",
        t=f"{copy}.owners",
    )
    assert f"nextval('{copy}.owners_id_seq'::regclass)" == shown[0][1]
    assert shown[2][2] == f"{copy}.mood" and f"{copy}.mood" in shown[2][1]
    assert "id * 2" in shown[3][1]
    fk = _fetch(
        engine,
        "SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = "
        "CAST(:t AS regclass) AND contype = 'f'",
        t=f"{copy}.pets",
    )
    assert fk == [(f"{copy}.owners",)]
    owner = _fetch(engine, "SELECT pg_get_serial_sequence(:t, 'id')", t=f"{copy}.owners")
    assert owner == [(f"{copy}.owners_id_seq",)]
    indexes = _fetch(engine, "SELECT indexname FROM pg_indexes WHERE schemaname = :s", s=copy)
    assert {"ix_pets_lower_name", "uq_pet_name", "owners_name_key"} <= {i[0] for i in indexes}
    tables = _fetch(engine, "SELECT count(*) FROM pg_tables WHERE schemaname = :s", s=copy)
    assert tables == [(10,)]
    # No rows copied, sequences start afresh, constraints hold.
    with engine.begin() as conn:
        assert conn.exec_driver_sql(f'SELECT count(*) FROM "{copy}".owners').scalar() == 0
        new_id = conn.exec_driver_sql(
            f"INSERT INTO \"{copy}\".owners (name) VALUES ('c1') RETURNING id, mood, doubled"
        ).one()
        assert tuple(new_id) == (1, "happy", 2)
        note = conn.exec_driver_sql(f'SELECT note FROM "{copy}".owners').scalar()
        assert note == "100% sure"
        conn.exec_driver_sql(f"INSERT INTO \"{copy}\".pets (owner_id, name) VALUES (1, 'rex')")
    with pytest.raises(sa_exc.IntegrityError):
        with engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO \"{copy}\".pets (owner_id, name) VALUES (9, 'x')")
    # The template is untouched.
    assert _fetch(engine, f'SELECT count(*) FROM "{template}".owners') == [(2,)]
    assert _fetch(engine, f'SELECT count(*) FROM "{template}".pets') == [(0,)]


def test_clone_with_data_and_alembic_version(engine, cleanup, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    template, copy = unique_name("tpl"), unique_name("life")
    cleanup += [template, copy]
    sa_tenancy.create_tenant(engine, template, alembic_config=ini)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO \"{template}\".items (name) VALUES ('a'), ('b')")
    sa_tenancy.clone_tenant(engine, template, copy, data=True)
    assert _fetch(engine, f'SELECT version_num FROM "{copy}".alembic_version') == [("r1",)]
    assert ledger(engine)[copy] == "r1"
    assert _fetch(engine, f'SELECT name FROM "{copy}".items ORDER BY id') == [("a",), ("b",)]
    with engine.begin() as conn:
        new_id = conn.exec_driver_sql(
            f"INSERT INTO \"{copy}\".items (name) VALUES ('c') RETURNING id"
        ).scalar()
    assert new_id == 3


def test_clone_refuses_a_template_that_is_not_a_tenant(engine, cleanup):
    copy = unique_name("life")
    cleanup.append(copy)
    with pytest.raises(sa_tenancy.UnknownSchema):
        sa_tenancy.clone_tenant(engine, unique_name("nope"), copy)
    assert copy not in _schemas(engine, "life_")


def test_rename(engine, cleanup):
    old, new, other = unique_name("life"), unique_name("life"), unique_name("life")
    cleanup += [old, new, other]
    sa_tenancy.create_tenant(engine, old, metadata=tenant_metadata)
    sa_tenancy.create_tenant(engine, other, metadata=tenant_metadata)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO \"{old}\".notes (body) VALUES ('kept')")
    assert sa_tenancy.rename_tenant(engine, old, new) == new
    listed = sa_tenancy.list_tenants(engine)
    assert new in listed and old not in listed
    assert _fetch(engine, f'SELECT body FROM "{new}".notes') == [("kept",)]
    assert new in ledger(engine) and old not in ledger(engine)
    with pytest.raises(sa_tenancy.TenancyError, match="already exists"):
        sa_tenancy.rename_tenant(engine, new, other)
    assert new in sa_tenancy.list_tenants(engine)
    with pytest.raises(sa_tenancy.UnknownSchema):
        sa_tenancy.rename_tenant(engine, old, unique_name("life"))


def test_drop_in_batches_and_resume(engine, cleanup, monkeypatch):
    name = unique_name("life")
    cleanup.append(name)
    sa_tenancy.create_tenant(engine, name)
    with engine.begin() as conn:
        for i in range(35):
            conn.exec_driver_sql(f'CREATE TABLE "{name}".t{i} (id serial PRIMARY KEY, v text)')
    monkeypatch.setattr(lifecycle, "_DROP_AT_ONCE", 10)  # 35 tables x 4 objects > 10
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.startswith("DROP"):
            statements.append(statement)

    from sqlalchemy import event

    event.listen(engine, "before_cursor_execute", count)
    try:
        sa_tenancy.drop_tenant(engine, name, batch_size=10)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert name not in _schemas(engine, "life_")
    assert len([s for s in statements if s.startswith("DROP TABLE")]) == 4  # 10+10+10+5
    # An interrupted batched drop leaves a schema marked as dropping: not a tenant any more,
    # and drop_tenant finishes it.
    again = unique_name("life")
    cleanup.append(again)
    sa_tenancy.create_tenant(engine, again, metadata=tenant_metadata)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"COMMENT ON SCHEMA \"{again}\" IS 'sa_tenancy:dropping'")
    assert again not in sa_tenancy.list_tenants(engine)
    sa_tenancy.drop_tenant(engine, again)
    assert again not in _schemas(engine, "life_")


def test_reservoir_fill_and_claim(engine, cleanup, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    before = set(lifecycle.list_tenants(engine))
    size = sa_tenancy.reservoir_size(engine)
    spares = sa_tenancy.fill_reservoir(engine, 3, alembic_config=ini)
    cleanup += spares
    assert sa_tenancy.reservoir_size(engine) == size + 3
    assert set(sa_tenancy.list_tenants(engine)) == before  # spares are not tenants
    a, b = unique_name("life"), unique_name("life")
    cleanup += [a, b]
    assert sa_tenancy.claim_tenant(engine, a) == a
    assert a in sa_tenancy.list_tenants(engine)
    assert _fetch(engine, f'SELECT version_num FROM "{a}".alembic_version') == [("r1",)]
    assert ledger(engine)[a] == "r1"
    assert sa_tenancy.reservoir_size(engine) == size + 2
    with pytest.raises(sa_tenancy.TenancyError, match="already exists"):
        sa_tenancy.claim_tenant(engine, a)
    assert sa_tenancy.reservoir_size(engine) == size + 2
    with pytest.raises(sa_tenancy.InvalidSchemaName):
        sa_tenancy.claim_tenant(engine, "Not Valid")


def test_concurrent_claims_take_distinct_spares(engine, cleanup):
    meta = MetaData()
    Table("items", meta, Column("id", Integer, primary_key=True))
    with engine.connect() as conn:
        existing = (
            conn.execute(
                text("SELECT count(*) FROM sa_tenancy.tenant_versions WHERE spare")
            ).scalar()
            if _ledger.exists(conn)
            else 0
        )
    spares = sa_tenancy.fill_reservoir(engine, 4, metadata=meta)
    cleanup += spares
    names = [unique_name("life") for _ in range(4 + existing)]
    cleanup += names
    errors: list[BaseException] = []

    def claim(name: str) -> None:
        try:
            sa_tenancy.claim_tenant(engine, name)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=claim, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert set(names) <= set(sa_tenancy.list_tenants(engine))
    assert sa_tenancy.reservoir_size(engine) == 0
    with pytest.raises(sa_tenancy.ReservoirEmpty):
        sa_tenancy.claim_tenant(engine, unique_name("life"))


def test_write_env_helper_makes_a_loadable_config(tmp_path: Path):
    ini = write_env(tmp_path, revisions=("r1", "r2"))
    from sa_tenancy.migrate import head_revision

    assert head_revision(ini) == "r2"


def test_claim_from_a_database_that_never_had_a_reservoir(fleet_engine):
    with pytest.raises(sa_tenancy.ReservoirEmpty):
        sa_tenancy.claim_tenant(fleet_engine, "first")
    assert sa_tenancy.list_tenants(fleet_engine) == []
    assert sa_tenancy.reservoir_size(fleet_engine) == 0


def test_percent_signs_in_widened_names_mean_exactly_themselves(engine, cleanup):
    policy = sa_tenancy.NamePolicy(r"[a-z0-9_%]+")
    one = unique_name("pct") + "%"
    two = one + "%"  # psycopg's placeholder escaping would turn one into the other
    copy = one.replace("pct", "cpy")
    cleanup += [one, two, copy]
    sa_tenancy.create_tenant(engine, one, metadata=tenant_metadata, names=policy)
    sa_tenancy.create_tenant(engine, two, metadata=tenant_metadata, names=policy)
    with engine.begin() as conn:
        conn.execute(text(f'INSERT INTO "{one}".notes (body) VALUES (:b)'), {"b": "mine"})
    sa_tenancy.clone_tenant(engine, one, copy, data=True, names=policy)
    assert _fetch(engine, f'SELECT body FROM "{copy}".notes') == [("mine",)]
    assert _fetch(engine, f'SELECT count(*) FROM "{two}".notes') == [(0,)]
    assert {one, two, copy} <= set(sa_tenancy.list_tenants(engine))
    assert {one, two, copy} <= set(ledger(engine))
    sa_tenancy.drop_tenant(engine, one, names=policy)
    assert one not in _schemas(engine, "pct_") and two in _schemas(engine, "pct_")
