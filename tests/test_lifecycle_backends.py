"""Lifecycle never destroys what is not a tenant: SQLite files, MariaDB databases, spares.

On every backend a tenant carries a mark made by ``create_tenant`` (PostgreSQL: the schema
comment; MySQL/MariaDB: a marker table; SQLite: the file header's ``application_id``).
Unmarked databases and files are never listed, dropped or overwritten, and names that mean the
default or a system database are refused before any SQL or file operation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy import insert
from sqlalchemy import make_url
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import InvalidSchemaName
from sa_tenancy import NamePolicy
from sa_tenancy import SQLiteFiles
from sa_tenancy import TenancyError
from sa_tenancy import UnknownSchema
from sa_tenancy import _ledger
from sa_tenancy.integrations.workers import for_each_tenant
from sa_tenancy.testing import unique_name

from ._alembic_env import write_env
from .models import Note
from .models import tenant_metadata

WIDE = NamePolicy(r".*")


def _visit(session, schema):
    return schema


# -- SQLite --------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """The main database ``app.db`` with the tenant tables and one row of its own."""
    engine = create_engine(f"sqlite:///{tmp_path}/app.db")
    tenant_metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(Note).values(id=1, body="main-row"))
    yield engine
    engine.dispose()


def _main_rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(Note.body)).scalars())


def _plain_sqlite_file(path: Path) -> None:
    """A database file that sa_tenancy did not make (no mark), holding one row."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE keep (v TEXT)")
        db.execute("INSERT INTO keep VALUES ('precious')")
    db.close()


def _plain_rows(path: Path) -> list[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT v FROM keep")]
    finally:
        db.close()


def _application_id(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("PRAGMA application_id").fetchone()[0])
    finally:
        db.close()


def test_sqlite_create_refuses_the_main_file_and_keeps_its_rows(sqlite_engine, tmp_path):
    before = (tmp_path / "app.db").read_bytes()
    for exist_ok in (False, True):
        with pytest.raises(InvalidSchemaName, match="main database file"):
            sa_tenancy.create_tenant(
                sqlite_engine, "app", metadata=tenant_metadata, exist_ok=exist_ok
            )
    with pytest.raises(InvalidSchemaName):
        sa_tenancy.drop_tenant(sqlite_engine, "app")
    with pytest.raises(InvalidSchemaName):
        sa_tenancy.tenant_exists(sqlite_engine, "app")
    assert (tmp_path / "app.db").read_bytes() == before
    assert _main_rows(sqlite_engine) == ["main-row"]
    assert "app" not in sa_tenancy.list_tenants(sqlite_engine)


def test_sqlite_unmarked_file_is_never_listed_dropped_or_overwritten(sqlite_engine, tmp_path):
    other = tmp_path / "other.db"
    _plain_sqlite_file(other)
    tenant = sa_tenancy.create_tenant(sqlite_engine, unique_name("tn"), metadata=tenant_metadata)
    assert sa_tenancy.list_tenants(sqlite_engine) == [tenant]
    assert not sa_tenancy.tenant_exists(sqlite_engine, "other")
    with pytest.raises(UnknownSchema, match="not a tenant"):
        sa_tenancy.drop_tenant(sqlite_engine, "other")
    for exist_ok in (False, True):
        with pytest.raises(TenancyError, match="not a tenant") as raised:
            sa_tenancy.create_tenant(
                sqlite_engine, "other", metadata=tenant_metadata, exist_ok=exist_ok
            )
        assert raised.type is TenancyError
    assert _plain_rows(other) == ["precious"]
    assert _application_id(other) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["app.db", "other.db", f"{tenant}.db"]
    )


def test_sqlite_main_file_behind_a_uri_is_refused(tmp_path):
    engine = create_engine(f"sqlite:///file:{tmp_path}/app.db?uri=true")
    try:
        tenant_metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(Note).values(id=1, body="main-row"))
        for exist_ok in (False, True):
            with pytest.raises(InvalidSchemaName, match="main database file"):
                sa_tenancy.create_tenant(
                    engine, "app", metadata=tenant_metadata, directory=tmp_path, exist_ok=exist_ok
                )
        with pytest.raises(InvalidSchemaName, match="main database file"):
            sa_tenancy.drop_tenant(engine, "app", directory=tmp_path)
        assert sa_tenancy.list_tenants(engine, directory=tmp_path) == []
        assert _main_rows(engine) == ["main-row"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", ["main", "temp", "MAIN", "Temp"])
def test_sqlite_reserved_schema_names_refused(sqlite_engine, tmp_path, name):
    for policy in (None, WIDE):
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.create_tenant(sqlite_engine, name, metadata=tenant_metadata, names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.drop_tenant(sqlite_engine, name, names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.tenant_exists(sqlite_engine, name, names=policy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]
    assert _main_rows(sqlite_engine) == ["main-row"]


@pytest.mark.parametrize("shape", ["parent", "nested", "absolute", "dot", "backslash"])
def test_sqlite_path_names_refused_even_by_a_wide_policy(sqlite_engine, tmp_path, shape):
    leaf = unique_name("esc")
    name = {
        "parent": f"../{leaf}",
        "nested": f"a/{leaf}",
        "absolute": f"/tmp/{leaf}",
        "dot": "..",
        "backslash": f"..\\{leaf}",
    }[shape]
    outside = [tmp_path.parent / f"{leaf}.db", Path(f"/tmp/{leaf}.db"), tmp_path / "a"]
    try:
        with pytest.raises(InvalidSchemaName, match="plain file name"):
            sa_tenancy.create_tenant(sqlite_engine, name, metadata=tenant_metadata, names=WIDE)
        with pytest.raises(InvalidSchemaName, match="plain file name"):
            sa_tenancy.drop_tenant(sqlite_engine, name, names=WIDE)
        with pytest.raises(InvalidSchemaName, match="plain file name"):
            sa_tenancy.tenant_exists(sqlite_engine, name, names=WIDE)
        assert not any(p.exists() for p in outside)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]
    finally:
        for path in outside:
            if path.is_file():
                path.unlink()


def test_sqlite_marked_tenants_are_listed_visited_and_dropped(sqlite_engine, tmp_path):
    a, b = sorted(unique_name("tn") for _ in range(2))
    for name in (a, b):
        sa_tenancy.create_tenant(sqlite_engine, name, metadata=tenant_metadata)
        assert _application_id(tmp_path / f"{name}.db") != 0
    _plain_sqlite_file(tmp_path / "other.db")
    _plain_sqlite_file(tmp_path / "zzz.db")
    assert sa_tenancy.list_tenants(sqlite_engine) == [a, b]
    assert sa_tenancy.create_tenant(sqlite_engine, a, exist_ok=True) == a
    with pytest.raises(TenancyError, match="already exists"):
        sa_tenancy.create_tenant(sqlite_engine, a)
    factory = sessionmaker(sqlite_engine)
    sa_tenancy.install(factory, strategy=SQLiteFiles())
    run = for_each_tenant(factory, _visit, jobs=1, progress=False)
    assert run.tenants == [a, b]
    assert not run.failures
    sa_tenancy.drop_tenant(sqlite_engine, a)
    assert not (tmp_path / f"{a}.db").exists()
    assert sa_tenancy.list_tenants(sqlite_engine) == [b]
    assert _plain_rows(tmp_path / "other.db") == ["precious"]
    assert _main_rows(sqlite_engine) == ["main-row"]


def test_sqlite_tenant_in_another_directory_and_a_file_marked_by_hand(sqlite_engine, tmp_path):
    folder = tmp_path / "tenants"
    name = sa_tenancy.create_tenant(
        sqlite_engine, "app", metadata=tenant_metadata, directory=folder
    )
    assert sa_tenancy.list_tenants(sqlite_engine, directory=folder) == ["app"]
    assert _main_rows(sqlite_engine) == ["main-row"]
    # A tenant file from an older version has no mark: marking it by hand makes it a tenant.
    old = folder / "legacy.db"
    _plain_sqlite_file(old)
    assert sa_tenancy.list_tenants(sqlite_engine, directory=folder) == [name]
    with sqlite3.connect(old) as db:
        db.execute(f"PRAGMA application_id = {_application_id(folder / 'app.db')}")
    db.close()
    assert sa_tenancy.list_tenants(sqlite_engine, directory=folder) == ["app", "legacy"]
    sa_tenancy.drop_tenant(sqlite_engine, "legacy", directory=folder)
    assert not old.exists()


# -- MySQL / MariaDB -----------------------------------------------------------------------------


@pytest.fixture
def databases(mysql_engine: Engine) -> Iterator[list[str]]:
    """Databases named here are dropped after the test, whatever state they are in."""
    names: list[str] = []
    yield names
    with mysql_engine.begin() as conn:
        for name in names:
            quoted = conn.dialect.identifier_preparer.quote_identifier(name)
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")


def _databases(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql("SHOW DATABASES")}


def _plain_database(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}`")
        conn.exec_driver_sql(f"CREATE TABLE `{name}`.keep (v VARCHAR(20))")
        conn.exec_driver_sql(f"INSERT INTO `{name}`.keep VALUES ('precious')")


def _mysql_defaults(url: str) -> list[str]:
    own = make_url(url).database
    assert own
    return [own, own.upper(), "mysql", "MySQL", "sys", "SYS", "performance_schema",
            "Performance_Schema", "information_schema"]  # fmt: skip


def test_mysql_default_and_system_databases_refused(mysql_engine, mysql_url):
    before = _databases(mysql_engine)
    for name in _mysql_defaults(mysql_url):
        for policy in (None, WIDE):
            for exist_ok in (False, True):
                with pytest.raises(InvalidSchemaName):
                    sa_tenancy.create_tenant(
                        mysql_engine, name, metadata=tenant_metadata, names=policy,
                        exist_ok=exist_ok,
                    )  # fmt: skip
            with pytest.raises(InvalidSchemaName):
                sa_tenancy.drop_tenant(mysql_engine, name, names=policy)
            with pytest.raises(InvalidSchemaName):
                sa_tenancy.tenant_exists(mysql_engine, name, names=policy)
    assert _databases(mysql_engine) == before
    assert not {"mysql", "sys", "performance_schema"} & set(sa_tenancy.list_tenants(mysql_engine))


def test_mysql_unmarked_database_is_never_listed_or_dropped(mysql_engine, databases):
    plain = unique_name("plain")
    databases.append(plain)
    _plain_database(mysql_engine, plain)
    assert plain not in sa_tenancy.list_tenants(mysql_engine)
    assert not sa_tenancy.tenant_exists(mysql_engine, plain)
    with pytest.raises(UnknownSchema, match="not a tenant"):
        sa_tenancy.drop_tenant(mysql_engine, plain)
    for exist_ok in (False, True):
        with pytest.raises(TenancyError, match="not a tenant") as raised:
            sa_tenancy.create_tenant(
                mysql_engine, plain, metadata=tenant_metadata, exist_ok=exist_ok
            )
        assert raised.type is TenancyError
    assert plain in _databases(mysql_engine)
    with mysql_engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT v FROM `{plain}`.keep").scalars().all() == ["precious"]
        tables = conn.exec_driver_sql(f"SHOW TABLES FROM `{plain}`").scalars().all()
    assert tables == ["keep"]


def test_mysql_marked_tenants_are_listed_visited_and_dropped(mysql_engine, databases):
    a, b = sorted(unique_name("tn") for _ in range(2))
    plain = unique_name("plain")
    databases += [a, b, plain]
    _plain_database(mysql_engine, plain)
    for name in (a, b):
        assert sa_tenancy.create_tenant(mysql_engine, name, metadata=tenant_metadata) == name
    assert sa_tenancy.create_tenant(mysql_engine, a, exist_ok=True) == a
    with pytest.raises(TenancyError, match="already exists"):
        sa_tenancy.create_tenant(mysql_engine, a)
    listed = sa_tenancy.list_tenants(mysql_engine)
    assert {a, b} <= set(listed) and plain not in listed
    assert sa_tenancy.tenant_exists(mysql_engine, a)
    factory = sessionmaker(mysql_engine)
    sa_tenancy.install(factory, strategy="translate_map")
    with factory(info={"schema": a}) as session:
        session.add(Note(id=1, body="in-a"))
        session.commit()
    with factory(info={"schema": a}) as session:
        assert session.scalars(select(Note.body)).all() == ["in-a"]
    run = for_each_tenant(factory, _visit, jobs=1, progress=False)
    assert {a, b} <= set(run.tenants) and plain not in run.tenants
    sa_tenancy.drop_tenant(mysql_engine, a)
    assert a not in _databases(mysql_engine) and b in _databases(mysql_engine)
    assert a not in sa_tenancy.list_tenants(mysql_engine)
    assert plain in _databases(mysql_engine)


def test_mysql_percent_in_a_widened_name_means_exactly_itself(mysql_engine, databases):
    policy = NamePolicy(r"[a-z0-9_%]+")
    one = unique_name("pct") + "%"
    two = one + "%"  # placeholder escaping would turn one into the other
    databases += [one, two]
    for name in (one, two):
        sa_tenancy.create_tenant(mysql_engine, name, metadata=tenant_metadata, names=policy)
    assert {one, two} <= set(sa_tenancy.list_tenants(mysql_engine))
    sa_tenancy.drop_tenant(mysql_engine, one, names=policy)
    assert one not in _databases(mysql_engine) and two in _databases(mysql_engine)


def test_mysql_failed_create_leaves_nothing(mysql_engine, databases):
    from sqlalchemy import Column
    from sqlalchemy import Integer
    from sqlalchemy import MetaData
    from sqlalchemy import Table

    broken = MetaData()
    Table("fine", broken, Column("id", Integer, primary_key=True))
    Table("bad", broken, Column("id", Integer, primary_key=True),
          Column("x", Integer, server_default=text("no_such_function()")))  # fmt: skip
    name = unique_name("tn")
    databases.append(name)
    with pytest.raises(Exception):  # noqa: B017 - the server's own error
        sa_tenancy.create_tenant(mysql_engine, name, metadata=broken)
    assert name not in _databases(mysql_engine)
    assert name not in sa_tenancy.list_tenants(mysql_engine)


# -- spares are not tenants until claimed ------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [NamePolicy(), WIDE, NamePolicy(lambda name: True), NamePolicy({"sa_spare_x", "sa_tenancy"})],
    ids=["default", "regex", "predicate", "allowlist"],
)
def test_spare_and_ledger_names_refused_by_every_policy(policy):
    for name in ("sa_spare_x", "sa_spare_0123456789abcdef", "SA_SPARE_x", "sa_tenancy"):
        with pytest.raises(InvalidSchemaName, match="reservoir|ledger"):
            policy.validate(name)
    assert NamePolicy().validate("sa_sparex") == "sa_sparex"


@pytest.fixture
def pg_cleanup(pg_engine: Engine) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    with pg_engine.begin() as conn:
        for name in names:
            _ledger.execute_ddl(conn, f"DROP SCHEMA IF EXISTS {_ledger.ident(name)} CASCADE")
            if _ledger.exists(conn):
                _ledger.forget(conn, name)


def test_spares_cannot_be_used_before_they_are_claimed(pg_engine, pg_cleanup, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    spares = sa_tenancy.fill_reservoir(pg_engine, 1, metadata=tenant_metadata)
    spares += sa_tenancy.fill_reservoir(pg_engine, 1, alembic_config=ini)
    spares += sa_tenancy.fill_reservoir(pg_engine, 1, metadata=tenant_metadata, alembic_config=ini)
    pg_cleanup += spares
    spare = spares[0]
    tenant = unique_name("tn")
    pg_cleanup.append(tenant)
    sa_tenancy.create_tenant(pg_engine, tenant, metadata=tenant_metadata)
    for strategy in ("search_path", "translate_map"):
        factory = sessionmaker(pg_engine)
        installation = sa_tenancy.install(factory, strategy=strategy, names=WIDE)
        try:
            with factory(info={"schema": spare}) as session:
                with pytest.raises(InvalidSchemaName, match="reservoir"):
                    session.execute(select(Note.body))
        finally:
            installation.uninstall()
    for policy in (None, WIDE):
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.create_tenant(pg_engine, spare, names=policy, exist_ok=True)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.create_tenant(pg_engine, "sa_spare_planted", names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.rename_tenant(pg_engine, tenant, "sa_spare_planted", names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.rename_tenant(pg_engine, spare, unique_name("tn"), names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.clone_tenant(pg_engine, spare, unique_name("tn"), names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.clone_tenant(pg_engine, tenant, "sa_spare_planted", names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.drop_tenant(pg_engine, spare, names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.tenant_exists(pg_engine, spare, names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.claim_tenant(pg_engine, "sa_spare_planted", names=policy)
    with pg_engine.connect() as conn:
        planted = conn.execute(
            text("SELECT count(*) FROM pg_namespace WHERE nspname = 'sa_spare_planted'")
        ).scalar()
        assert planted == 0
        assert conn.execute(text(f'SELECT count(*) FROM "{spare}".notes')).scalar() == 0
    # The library's own paths still build, migrate and hand out spares.
    with pg_engine.connect() as conn:
        versions = {
            s: conn.execute(text(f'SELECT version_num FROM "{s}".alembic_version')).scalar()
            for s in spares[1:]
        }
    assert versions == {spares[1]: "r1", spares[2]: "r1"}
    claimed = unique_name("tn")
    pg_cleanup.append(claimed)
    size = sa_tenancy.reservoir_size(pg_engine)
    assert sa_tenancy.claim_tenant(pg_engine, claimed) == claimed
    assert claimed in sa_tenancy.list_tenants(pg_engine)
    assert sa_tenancy.reservoir_size(pg_engine) == size - 1
