"""Namespaces: two applications' tenants in one database, each seeing only its own."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import InvalidSchemaName
from sa_tenancy import ReservoirEmpty
from sa_tenancy import SQLiteFiles
from sa_tenancy import TenancyError
from sa_tenancy import UnknownSchema
from sa_tenancy.integrations.workers import for_each_tenant
from sa_tenancy.migrate import migrate_tenants
from sa_tenancy.migrate import tenant_status
from sa_tenancy.testing import unique_name

from . import _alembic_env
from ._alembic_env import add_revisions
from ._alembic_env import ledger
from ._alembic_env import migration_counts
from ._alembic_env import run_cli
from ._alembic_env import write_env
from .models import tenant_metadata

fleet_url = _alembic_env.fleet_url
fleet_engine = _alembic_env.fleet_engine

BAD_NAMESPACES = ["", "Billing", "1st", "x-y", "a" * 32, "bill ing", "b'; DROP SCHEMA x; --", 7]


def _visit(session, schema):
    return schema


def _marks(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT nspname, obj_description(oid, 'pg_namespace') FROM pg_namespace "
                "WHERE obj_description(oid, 'pg_namespace') LIKE 'sa_tenancy:%'"
            )
        )
        return {r[0]: r[1] for r in rows}


def _namespaces(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT schema_name, namespace FROM sa_tenancy.tenant_versions"))
        return {r[0]: r[1] for r in rows}


# -- PostgreSQL ----------------------------------------------------------------------------------


def test_each_namespace_lists_checks_and_drops_only_its_own(fleet_engine):
    home = sa_tenancy.create_tenant(fleet_engine, "home", metadata=tenant_metadata)
    bill = sa_tenancy.create_tenant(
        fleet_engine, "bill", metadata=tenant_metadata, namespace="billing"
    )
    crm = sa_tenancy.create_tenant(fleet_engine, "crm1", metadata=tenant_metadata, namespace="crm")
    assert sa_tenancy.list_tenants(fleet_engine) == [home]
    assert sa_tenancy.list_tenants(fleet_engine, namespace="billing") == [bill]
    assert sa_tenancy.list_tenants(fleet_engine, namespace="crm") == [crm]
    assert sa_tenancy.list_tenants(fleet_engine, namespace="other") == []
    assert _marks(fleet_engine) == {
        home: "sa_tenancy:tenant",
        bill: "sa_tenancy:tenant:billing",
        crm: "sa_tenancy:tenant:crm",
    }
    assert _namespaces(fleet_engine) == {home: "", bill: "billing", crm: "crm"}
    assert sa_tenancy.tenant_exists(fleet_engine, bill, namespace="billing")
    assert not sa_tenancy.tenant_exists(fleet_engine, bill)
    assert not sa_tenancy.tenant_exists(fleet_engine, home, namespace="billing")
    # The wrong namespace cannot touch a tenant: it is not a tenant there.
    with pytest.raises(UnknownSchema, match="not a tenant of the default namespace"):
        sa_tenancy.drop_tenant(fleet_engine, bill)
    with pytest.raises(UnknownSchema, match="not a tenant of namespace 'crm'"):
        sa_tenancy.drop_tenant(fleet_engine, bill, namespace="crm")
    with pytest.raises(UnknownSchema):
        sa_tenancy.rename_tenant(fleet_engine, bill, "stolen", namespace="crm")
    with pytest.raises(UnknownSchema):
        sa_tenancy.clone_tenant(fleet_engine, bill, "copy", namespace="crm")
    # Names are one set per database: another namespace's tenant name is taken.
    with pytest.raises(TenancyError, match="already a tenant of namespace 'billing'"):
        sa_tenancy.create_tenant(fleet_engine, bill, namespace="crm")
    with pytest.raises(TenancyError, match="already a tenant of namespace 'billing'"):
        sa_tenancy.create_tenant(fleet_engine, bill, exist_ok=True)
    assert sa_tenancy.list_tenants(fleet_engine, namespace="billing") == [bill]
    assert sa_tenancy.list_tenants(fleet_engine, namespace="crm") == [crm]
    # The right namespace can.
    sa_tenancy.clone_tenant(fleet_engine, bill, "bill2", namespace="billing")
    sa_tenancy.rename_tenant(fleet_engine, "bill2", "bill3", namespace="billing")
    assert sa_tenancy.list_tenants(fleet_engine, namespace="billing") == [bill, "bill3"]
    assert _namespaces(fleet_engine)["bill3"] == "billing"
    sa_tenancy.drop_tenant(fleet_engine, bill, namespace="billing")
    assert sa_tenancy.list_tenants(fleet_engine, namespace="billing") == ["bill3"]
    assert sa_tenancy.list_tenants(fleet_engine) == [home]


def test_an_interrupted_drop_is_finished_through_its_own_namespace_only(fleet_engine):
    name = sa_tenancy.create_tenant(fleet_engine, "half", metadata=tenant_metadata, namespace="a")
    with fleet_engine.begin() as conn:  # what a batched drop leaves when it is interrupted
        conn.exec_driver_sql("COMMENT ON SCHEMA half IS 'sa_tenancy:dropping:a'")
    assert sa_tenancy.list_tenants(fleet_engine, namespace="a") == []
    with pytest.raises(UnknownSchema):
        sa_tenancy.drop_tenant(fleet_engine, name)
    with pytest.raises(UnknownSchema):
        sa_tenancy.drop_tenant(fleet_engine, name, namespace="b")
    assert _marks(fleet_engine) == {name: "sa_tenancy:dropping:a"}
    sa_tenancy.drop_tenant(fleet_engine, name, namespace="a")
    assert _marks(fleet_engine) == {}


@pytest.mark.parametrize("namespace", BAD_NAMESPACES)
def test_invalid_namespaces_are_refused_before_any_sql(fleet_engine, namespace):
    calls = [
        lambda: sa_tenancy.create_tenant(fleet_engine, "fresh", namespace=namespace),
        lambda: sa_tenancy.list_tenants(fleet_engine, namespace=namespace),
        lambda: sa_tenancy.drop_tenant(fleet_engine, "fresh", namespace=namespace),
        lambda: sa_tenancy.fill_reservoir(fleet_engine, 1, namespace=namespace),
        lambda: sa_tenancy.claim_tenant(fleet_engine, "fresh", namespace=namespace),
        lambda: tenant_status(fleet_engine, namespace=namespace),
    ]
    for call in calls:
        with pytest.raises(InvalidSchemaName, match="lowercase letter"):
            call()
    with fleet_engine.connect() as conn:
        assert conn.execute(text("SELECT to_regnamespace('fresh')")).scalar() is None
        assert conn.execute(text("SELECT to_regnamespace('sa_tenancy')")).scalar() is None


def test_a_spare_of_one_namespace_is_never_claimed_by_another(fleet_engine):
    spares = sa_tenancy.fill_reservoir(fleet_engine, 2, metadata=tenant_metadata, namespace="a")
    assert sa_tenancy.reservoir_size(fleet_engine, namespace="a") == 2
    assert sa_tenancy.reservoir_size(fleet_engine, namespace="b") == 0
    assert sa_tenancy.reservoir_size(fleet_engine) == 0
    assert {_marks(fleet_engine)[s] for s in spares} == {"sa_tenancy:spare:a"}
    with pytest.raises(ReservoirEmpty, match="namespace 'b'"):
        sa_tenancy.claim_tenant(fleet_engine, "bee", namespace="b")
    with pytest.raises(ReservoirEmpty):
        sa_tenancy.claim_tenant(fleet_engine, "dflt")
    assert sa_tenancy.reservoir_size(fleet_engine, namespace="a") == 2
    assert sa_tenancy.claim_tenant(fleet_engine, "ay", namespace="a") == "ay"
    assert sa_tenancy.list_tenants(fleet_engine, namespace="a") == ["ay"]
    assert sa_tenancy.list_tenants(fleet_engine, namespace="b") == []
    assert _marks(fleet_engine)["ay"] == "sa_tenancy:tenant:a"
    assert _namespaces(fleet_engine)["ay"] == "a"
    status = tenant_status(fleet_engine, namespace="a")
    assert sorted((r["schema"] == "ay", r["kind"]) for r in status.tenants) == [
        (False, "spare"),
        (True, "tenant"),
    ]
    assert tenant_status(fleet_engine, namespace="b").tenants == []


def test_migrating_one_namespace_leaves_the_other_behind(fleet_url, fleet_engine, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    for ns in ("a", "b"):
        sa_tenancy.create_tenant(fleet_engine, f"{ns}_0", alembic_config=ini, namespace=ns)
        sa_tenancy.clone_tenant(fleet_engine, f"{ns}_0", f"{ns}_1", namespace=ns)
    sa_tenancy.fill_reservoir(fleet_engine, 1, template="b_0", namespace="b")
    add_revisions(tmp_path, ("r2",))
    report = migrate_tenants(fleet_url, ini, jobs=1, namespace="a")
    assert report.ok and (report.total, report.count("migrated")) == (2, 2)
    assert migration_counts(fleet_engine) == {"a_0": 1, "a_1": 1}
    revisions = ledger(fleet_engine)
    assert (revisions["a_0"], revisions["a_1"]) == ("r2", "r2")
    assert (revisions["b_0"], revisions["b_1"]) == ("r1", "r1")
    status_a = tenant_status(fleet_engine, config=ini, namespace="a")
    assert status_a.ok and [r["schema"] for r in status_a.tenants] == ["a_0", "a_1"]
    status_b = tenant_status(fleet_engine, config=ini, namespace="b", verify=True)
    assert status_b.by_revision() == {"r1": 3}  # two tenants and b's spare
    assert {r["state"] for r in status_b.tenants} == {"behind"}
    assert tenant_status(fleet_engine, config=ini).tenants == []
    # Naming another namespace's tenant: "missing", and it is not migrated.
    named = migrate_tenants(fleet_url, ini, jobs=1, tenants=["b_0"], namespace="a")
    assert [(r.schema, r.status) for r in named.results] == [("b_0", "missing")]
    assert ledger(fleet_engine)["b_0"] == "r1"
    assert migrate_tenants(fleet_url, ini, jobs=1).total == 0  # the default namespace is empty
    rest = migrate_tenants(fleet_url, ini, jobs=1, namespace="b")
    assert rest.ok and rest.count("migrated") == 3
    assert set(ledger(fleet_engine).values()) == {"r2"}


def test_for_each_tenant_visits_its_namespace_only(fleet_engine):
    for name, ns in (("one", None), ("two", "side"), ("three", "side")):
        sa_tenancy.create_tenant(fleet_engine, name, metadata=tenant_metadata, namespace=ns)
    factory = sessionmaker(fleet_engine)
    installation = sa_tenancy.install(factory)
    try:
        side = for_each_tenant(factory, _visit, jobs=2, progress=False, namespace="side")
        assert side.results == {"three": "three", "two": "two"} and not side.failures
        default = for_each_tenant(factory, _visit, jobs=2, progress=False)
        assert default.tenants == ["one"]
        with pytest.raises(InvalidSchemaName):
            for_each_tenant(factory, _visit, progress=False, namespace="No")
    finally:
        installation.uninstall()


def test_a_ledger_made_before_namespaces_is_upgraded_in_place(fleet_engine):
    old = sa_tenancy.create_tenant(fleet_engine, "old", metadata=tenant_metadata)
    spares = sa_tenancy.fill_reservoir(fleet_engine, 2, metadata=tenant_metadata)
    with fleet_engine.begin() as conn:  # the ledger as an earlier version made it
        conn.exec_driver_sql("DROP INDEX sa_tenancy.tenant_versions_spare_ns")
        conn.exec_driver_sql("ALTER TABLE sa_tenancy.tenant_versions DROP COLUMN namespace")
    assert tenant_status(fleet_engine).by_revision() == {"None": 3}  # reads need no column
    # A claim meets the old table, adds the column once and claims from the default namespace.
    assert sa_tenancy.claim_tenant(fleet_engine, "newer") == "newer"
    assert _namespaces(fleet_engine) == {
        old: "",
        "newer": "",
        **dict.fromkeys(sorted(spares)[1:], ""),
    }
    assert sa_tenancy.reservoir_size(fleet_engine) == 1
    assert sa_tenancy.list_tenants(fleet_engine) == ["newer", old]
    with pytest.raises(ReservoirEmpty):
        sa_tenancy.claim_tenant(fleet_engine, "other", namespace="billing")
    with fleet_engine.connect() as conn:
        index = conn.execute(text("SELECT to_regclass('sa_tenancy.tenant_versions_spare_ns')"))
        assert index.scalar() is not None


def test_an_old_ledger_is_upgraded_by_the_first_write(fleet_engine):
    sa_tenancy.create_tenant(fleet_engine, "old", metadata=tenant_metadata)
    with fleet_engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE sa_tenancy.tenant_versions DROP COLUMN namespace")
    sa_tenancy.create_tenant(fleet_engine, "new", metadata=tenant_metadata, namespace="n")
    assert _namespaces(fleet_engine) == {"old": "", "new": "n"}
    assert sa_tenancy.list_tenants(fleet_engine) == ["old"]


def test_adopted_schema_joins_the_namespace(fleet_engine):
    with fleet_engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA legacy")
    assert sa_tenancy.adopt_schema(fleet_engine, "legacy", namespace="crm") == "legacy"
    assert sa_tenancy.list_tenants(fleet_engine, namespace="crm") == ["legacy"]
    assert sa_tenancy.list_tenants(fleet_engine) == []
    assert _namespaces(fleet_engine) == {"legacy": "crm"}
    with pytest.raises(TenancyError, match="already a tenant"):
        sa_tenancy.adopt_schema(fleet_engine, "legacy")


# -- the command line ----------------------------------------------------------------------------


def test_cli_namespace_before_or_after_the_command_and_from_the_environment(
    fleet_url, fleet_engine
):
    before = run_cli(["--namespace", "billing", "create", "acme"], url=fleet_url)
    assert before.returncode == 0, before.stderr
    after = run_cli(["create", "globex", "--namespace", "crm", "--json"], url=fleet_url)
    assert json.loads(after.stdout) == {"created": ["globex"], "failed": {}}
    plain = run_cli(["create", "home"], url=fleet_url)
    assert plain.returncode == 0, plain.stderr
    env = {"SA_TENANCY_NAMESPACE": "billing"}
    assert run_cli(["list"], url=fleet_url, env=env).stdout.split() == ["acme"]
    assert run_cli(["list", "--namespace", "crm"], url=fleet_url, env=env).stdout.split() == [
        "globex"
    ]
    assert run_cli(["list"], url=fleet_url).stdout.split() == ["home"]
    # --url before the command, no DATABASE_URL.
    listed = run_cli(["--url", fleet_url, "--namespace", "crm", "list", "--json"], url=None)
    assert json.loads(listed.stdout) == ["globex"]
    wrong = run_cli(["drop", "globex", "--yes"], url=fleet_url, env=env)
    assert wrong.returncode == 1 and "FAILED globex: " in wrong.stdout
    assert sa_tenancy.list_tenants(fleet_engine, namespace="crm") == ["globex"]
    renamed = run_cli(["rename", "globex", "initech"], url=fleet_url, env=env)
    assert renamed.returncode == 1 and sa_tenancy.tenant_exists(
        fleet_engine, "globex", namespace="crm"
    )
    status = run_cli(["status", "--json"], url=fleet_url, env=env)
    assert [r["schema"] for r in json.loads(status.stdout)["not_current"]] == []
    assert json.loads(status.stdout)["total"] == 1
    bad = run_cli(["--namespace", "Bad-Name", "create", "x"], url=fleet_url)
    assert bad.returncode == 2 and "lowercase letter" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    bad_env = run_cli(["list"], url=fleet_url, env={"SA_TENANCY_NAMESPACE": "9"})
    assert bad_env.returncode == 2 and "invalid namespace" in bad_env.stderr
    assert not sa_tenancy.tenant_exists(fleet_engine, "x")
    dropped = run_cli(["--namespace", "crm", "drop", "globex", "--yes"], url=fleet_url)
    assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    assert sa_tenancy.list_tenants(fleet_engine, namespace="crm") == []


def test_cli_migrate_and_reservoir_in_a_namespace(fleet_url, fleet_engine, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    for ns in ("a", "b"):
        made = run_cli(
            ["create", f"{ns}_0", "--config", str(ini), "--namespace", ns], url=fleet_url
        )
        assert made.returncode == 0, made.stderr
    filled = run_cli(["--namespace", "a", "reservoir", "--fill", "1", "--clone-from", "a_0"],
                     url=fleet_url)  # fmt: skip
    assert filled.returncode == 0 and "1 waiting" in filled.stdout, filled.stderr
    other = run_cli(["reservoir", "--json"], url=fleet_url, env={"SA_TENANCY_NAMESPACE": "b"})
    assert json.loads(other.stdout)["spares"] == 0
    add_revisions(tmp_path, ("r2",))
    run = run_cli(["migrate", "--config", str(ini), "--jobs", "1", "--json"], url=fleet_url,
                  env={"SA_TENANCY_NAMESPACE": "a"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["migrated"] == 2  # a_0 and a's spare
    assert ledger(fleet_engine)["b_0"] == "r1"
    behind = run_cli(["status", "--config", str(ini), "--namespace", "b"], url=fleet_url)
    assert behind.returncode == 1 and "BEHIND b_0: r1" in behind.stdout


def test_cli_help_names_the_namespace_option_and_variable():
    top = run_cli(["--help"], url=None)
    assert "--namespace" in top.stdout and "SA_TENANCY_NAMESPACE" in top.stdout
    assert "before or after the command" in top.stdout
    for command in ("create", "drop", "list", "migrate", "status", "reservoir", "rename"):
        assert "--namespace" in run_cli([command, "--help"], url=None).stdout, command


# -- MySQL / MariaDB -----------------------------------------------------------------------------


@pytest.fixture
def databases(mysql_engine: Engine) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    with mysql_engine.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")


def test_mysql_namespaces_list_create_and_drop_their_own(mysql_engine, databases):
    home, bill = unique_name("nsh"), unique_name("nsb")
    databases += [home, bill]
    sa_tenancy.create_tenant(mysql_engine, home, metadata=tenant_metadata)
    sa_tenancy.create_tenant(mysql_engine, bill, metadata=tenant_metadata, namespace="billing")
    assert home in sa_tenancy.list_tenants(mysql_engine)
    assert bill not in sa_tenancy.list_tenants(mysql_engine)
    assert sa_tenancy.list_tenants(mysql_engine, namespace="billing") == [bill]
    with mysql_engine.connect() as conn:
        mark = conn.exec_driver_sql(f"SELECT mark FROM `{bill}`._sa_tenancy_tenant").scalar()
    assert mark == "sa_tenancy:tenant:billing"
    assert sa_tenancy.tenant_exists(mysql_engine, bill, namespace="billing")
    assert not sa_tenancy.tenant_exists(mysql_engine, bill)
    with pytest.raises(UnknownSchema, match="default namespace"):
        sa_tenancy.drop_tenant(mysql_engine, bill)
    with pytest.raises(TenancyError, match="another namespace"):
        sa_tenancy.create_tenant(mysql_engine, bill, exist_ok=True)
    with pytest.raises(UnknownSchema):
        sa_tenancy.drop_tenant(mysql_engine, home, namespace="billing")
    assert sa_tenancy.list_tenants(mysql_engine, namespace="billing") == [bill]
    sa_tenancy.drop_tenant(mysql_engine, bill, namespace="billing")
    assert sa_tenancy.list_tenants(mysql_engine, namespace="billing") == []
    assert home in sa_tenancy.list_tenants(mysql_engine)


# -- SQLite --------------------------------------------------------------------------------------


def test_sqlite_namespaces_list_create_drop_and_visit_their_own(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path}/app.db")
    try:
        sa_tenancy.create_tenant(engine, "home", metadata=tenant_metadata)
        sa_tenancy.create_tenant(engine, "bill", metadata=tenant_metadata, namespace="billing")
        assert sa_tenancy.list_tenants(engine) == ["home"]
        assert sa_tenancy.list_tenants(engine, namespace="billing") == ["bill"]
        with sqlite3.connect(tmp_path / "bill.db") as db:
            assert db.execute("SELECT mark FROM _sa_tenancy_tenant").fetchall() == [
                ("sa_tenancy:tenant:billing",)
            ]
        db.close()
        with sqlite3.connect(tmp_path / "home.db") as db:  # the default namespace: as before
            names = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        db.close()
        assert ("_sa_tenancy_tenant",) not in names
        with pytest.raises(UnknownSchema, match="default namespace"):
            sa_tenancy.drop_tenant(engine, "bill")
        with pytest.raises(UnknownSchema):
            sa_tenancy.drop_tenant(engine, "home", namespace="billing")
        assert (tmp_path / "bill.db").exists() and (tmp_path / "home.db").exists()
        factory = sessionmaker(engine)
        installation = sa_tenancy.install(factory, strategy=SQLiteFiles())
        try:
            run = for_each_tenant(factory, _visit, jobs=1, progress=False, namespace="billing")
            assert run.results == {"bill": "bill"}
        finally:
            installation.uninstall()
        sa_tenancy.drop_tenant(engine, "bill", namespace="billing")
        assert not (tmp_path / "bill.db").exists()
        assert sa_tenancy.list_tenants(engine) == ["home"]
    finally:
        engine.dispose()
