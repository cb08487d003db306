"""Tenant provisioning, fleet migrations and drift checks at scale.

``python -m benchmarks lifecycle --dburl URL [--n 1000] [--fleet 1000] [--jobs 2]``

Runs in a scratch database of its own and reports, each next to its baseline from the same run:

* **create**: ``create_tenant`` with a 10-table ``MetaData`` (the baseline: ``create_all``
  through a translate map), ``clone_tenant`` of a tenant with the same 10 tables, and
  ``claim_tenant`` from a reservoir filled beforehand (filling is timed separately); per-tenant
  median and p95, ratio to plain create;
* **migrate**: ``--fleet`` tenants, one ``ALTER TABLE ... ADD COLUMN`` each through Alembic
  (``migrate_tenants``, ``--jobs`` worker processes, start-up included), against the raw-SQL
  floor: one connection doing ``BEGIN; set_config(search_path); ALTER; UPDATE
  alembic_version; COMMIT`` per tenant with no Alembic at all;
* **drift**: ``tenant_status`` over the whole fleet from the ledger, and with ``verify=True``
  (reads every tenant's ``alembic_version``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Column
from sqlalchemy import ForeignKey
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import create_engine
from sqlalchemy import text

import sa_tenancy
from sa_tenancy import _templates

from . import _harness

R1 = """
import sqlalchemy as sa
from alembic import op

revision = "r1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("items", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("name", sa.Text))


def downgrade():
    op.drop_table("items")
"""

R2 = """
import sqlalchemy as sa
from alembic import op

revision = "r2"
down_revision = "r1"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("items", sa.Column("price", sa.Integer))


def downgrade():
    op.drop_column("items", "price")
"""


def ten_tables() -> MetaData:
    """A 10-table tenant: serial keys, a foreign key chain, a unique and a plain index each."""
    meta = MetaData()
    previous = None
    for i in range(10):
        cols: list[Any] = [
            Column("id", Integer, primary_key=True),
            Column("name", String(100), nullable=False, unique=True),
            Column("qty", Integer, server_default="0"),
        ]
        if previous is not None:
            cols.append(Column("parent_id", ForeignKey(f"{previous}.id")))
        table = Table(f"table_{i}", meta, *cols)
        Index(f"ix_table_{i}_qty", table.c.qty)
        previous = table.name
    return meta


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(p95 * 1000, 2),
        "n": len(ordered),
    }


def _timed(fn: Any, names: list[str], deadline: float) -> list[float]:
    samples = []
    for name in names:
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        fn(name)
        samples.append(time.perf_counter() - started)
    return samples


def bench_create(url: str, n: int, budget: float) -> dict[str, Any]:
    engine = create_engine(url, pool_size=1)
    meta = ten_tables()
    sa_tenancy.create_tenant(engine, "template", metadata=meta)
    deadline = time.monotonic() + budget
    # Interleave so the three see the same machine: plain, clone, claim, plain, ...
    fill_started = time.perf_counter()
    sa_tenancy.fill_reservoir(engine, n, template="template")
    fill_seconds = time.perf_counter() - fill_started
    plain: list[float] = []
    clone: list[float] = []
    claim: list[float] = []
    for i in range(n):
        if time.monotonic() > deadline:
            break
        plain += _timed(lambda s: sa_tenancy.create_tenant(engine, s, metadata=meta),
                        [f"plain_{i}"], deadline)  # fmt: skip
        clone += _timed(lambda s: sa_tenancy.clone_tenant(engine, "template", s),
                        [f"clone_{i}"], deadline)  # fmt: skip
        claim += _timed(lambda s: sa_tenancy.claim_tenant(engine, s), [f"claim_{i}"], deadline)
    engine.dispose()
    base = statistics.median(plain)
    return {
        "plain_create_all": _ms(plain),
        "clone": {**_ms(clone), "ratio_to_plain": round(statistics.median(clone) / base, 3)},
        "claim": {**_ms(claim), "ratio_to_plain": round(statistics.median(claim) / base, 3)},
        "reservoir_fill_per_spare_ms": round(fill_seconds / n * 1000, 2),
    }


def _write_env(directory: Path) -> Path:
    (directory / "versions").mkdir(parents=True)
    ini = directory / "alembic.ini"
    ini.write_text(_templates.ALEMBIC_INI.format(ini=ini))
    (directory / "env.py").write_text(_templates.ENV_PY)
    (directory / "script.py.mako").write_text(_templates.SCRIPT_MAKO)
    (directory / "versions" / "r1.py").write_text(R1)
    return ini


def _make_fleet(engine: Any, ini: Path, prefix: str, count: int) -> list[str]:
    """``count`` tenants at r1. The first is built by Alembic and its structure is checked
    against the rest; the rest are written in batches of plain DDL (setting up 10,000 tenants
    is not what is measured here)."""
    names = [f"{prefix}_{i:05d}" for i in range(count)]
    sa_tenancy.create_tenant(engine, names[0], alembic_config=ini)
    for start in range(1, count, 50):
        batch = names[start : start + 50]
        statements = []
        for name in batch:
            statements += [
                f'CREATE SCHEMA "{name}"',
                f"COMMENT ON SCHEMA \"{name}\" IS 'sa_tenancy:tenant'",
                f'CREATE TABLE "{name}".items (id serial PRIMARY KEY, name text)',
                f'CREATE TABLE "{name}".alembic_version (version_num varchar(32) NOT NULL, '
                "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",
                f"INSERT INTO \"{name}\".alembic_version VALUES ('r1')",
                f"INSERT INTO sa_tenancy.tenant_versions (schema_name, revision) "
                f"VALUES ('{name}', 'r1')",
            ]
        with engine.begin() as conn:
            conn.exec_driver_sql(";\n".join(statements))
    status = sa_tenancy.tenant_status(engine, config=ini, verify=True)
    mine = [row for row in status.tenants if row["schema"].startswith(prefix + "_")]
    assert len(mine) == count and {r["state"] for r in mine} == {"current"}, mine[:3]
    return names


def _raw_floor(engine: Any, names: list[str]) -> float:
    """Seconds to apply r2 by hand to ``names`` on one connection: the floor with no Alembic."""
    started = time.perf_counter()
    with engine.connect() as conn:
        for name in names:
            with conn.begin():
                conn.execute(text("SELECT set_config('search_path', :p, true)"),
                             {"p": f'"{name}"'})  # fmt: skip
                conn.exec_driver_sql("ALTER TABLE items ADD COLUMN price integer")
                conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'r2'")
    return time.perf_counter() - started


def bench_migrate(url: str, fleet: int, jobs: int, floor_n: int) -> dict[str, Any]:
    engine = create_engine(url, pool_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        ini = _write_env(Path(tmp))
        floor_names = _make_fleet(engine, ini, "floor", floor_n)
        floor_seconds = _raw_floor(engine, floor_names)
        for name in floor_names:  # out of the way of the fleet run
            sa_tenancy.drop_tenant(engine, name)
        started = time.perf_counter()
        names = _make_fleet(engine, ini, "fleet", fleet)
        build_seconds = time.perf_counter() - started
        (Path(tmp) / "versions" / "r2.py").write_text(R2)
        report = sa_tenancy.migrate_tenants(url, ini, jobs=jobs)
        assert report.ok and report.count("migrated") == len(names), report.as_dict()
        per_tenant = [r.seconds for r in report.results]
        noop = sa_tenancy.migrate_tenants(url, ini, jobs=jobs)
        assert noop.skipped == len(names)
        status = sa_tenancy.tenant_status(engine, config=ini)
        assert status.ok and len(status.tenants) == len(names)
        verified = sa_tenancy.tenant_status(engine, config=ini, verify=True)
        assert verified.ok
    engine.dispose()
    rate = len(names) / report.seconds
    floor_rate = floor_n / floor_seconds
    return {
        "fleet": len(names),
        "jobs": jobs,
        "build_fleet_seconds": round(build_seconds, 1),
        "migrate_seconds": round(report.seconds, 2),
        "migrate_tenants_per_s": round(rate, 1),
        "alembic_per_tenant_in_worker": _ms(per_tenant),
        "raw_sql_floor_tenants_per_s_one_connection": round(floor_rate, 1),
        "ratio_fleet_rate_to_floor": round(rate / floor_rate, 3),
        "noop_rerun_seconds": round(noop.seconds, 3),
        "status_from_ledger_seconds": round(status.seconds, 3),
        "status_verify_seconds": round(verified.seconds, 3),
    }


def bench_drift(url: str, count: int) -> dict[str, Any]:
    """Build ``count`` tenants at r1, then time the drift report with head at r2.

    ``psql`` baseline: the naive check, one query per tenant's ``alembic_version`` on one
    connection (what a loop over tenants does), timed on the first 1,000 and scaled.
    """
    engine = create_engine(url, pool_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        ini = _write_env(Path(tmp))
        started = time.perf_counter()
        names = _make_fleet(engine, ini, "drift", count)
        build_seconds = time.perf_counter() - started
        (Path(tmp) / "versions" / "r2.py").write_text(R2)
        status = sa_tenancy.tenant_status(engine, config=ini)
        assert len(status.behind) == count
        verified = sa_tenancy.tenant_status(engine, config=ini, verify=True)
        assert len(verified.behind) == count
        sample = names[:1000]
        naive_started = time.perf_counter()
        with engine.connect() as conn:
            for name in sample:
                conn.exec_driver_sql(f'SELECT version_num FROM "{name}".alembic_version').all()
        naive = (time.perf_counter() - naive_started) * count / len(sample)
    engine.dispose()
    return {
        "tenants": count,
        "build_seconds": round(build_seconds, 1),
        "status_from_ledger_seconds": round(status.seconds, 3),
        "status_verify_seconds": round(verified.seconds, 3),
        "naive_one_query_per_tenant_seconds_estimated": round(naive, 2),
        "ratio_ledger_to_naive": round(status.seconds / naive, 4),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks lifecycle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dburl", default=_harness.DEFAULT_URL, help="server to use")
    parser.add_argument("--n", type=int, default=1000, help="tenants per create method")
    parser.add_argument("--fleet", type=int, default=1000, help="tenants to migrate")
    parser.add_argument("--floor", type=int, default=300, help="tenants for the raw-SQL floor")
    parser.add_argument("--jobs", type=int, default=2, help="migration worker processes")
    parser.add_argument("--budget", type=float, default=120, help="seconds for the create part")
    parser.add_argument("--skip-create", action="store_true")
    parser.add_argument("--skip-migrate", action="store_true")
    parser.add_argument("--drift", type=int, default=0, metavar="N",
                        help="also time the drift report over N tenants (e.g. 10000)")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    env = _harness.environment(args.dburl)
    print(_harness.format_environment(env))
    results: dict[str, Any] = {}
    if not args.skip_create:
        with _harness.scratch_database(args.dburl, prefix="sa_tenancy_bench_life") as url:
            results["create"] = bench_create(url, args.n, args.budget)
        print("create (per tenant):")
        for key, value in results["create"].items():
            print(f"  {key}: {value}")
    if not args.skip_migrate:
        with _harness.scratch_database(args.dburl, prefix="sa_tenancy_bench_fleet") as url:
            results["migrate"] = bench_migrate(url, args.fleet, args.jobs, args.floor)
        print("migrate:")
        for key, value in results["migrate"].items():
            print(f"  {key}: {value}")
    if args.drift:
        with _harness.scratch_database(args.dburl, prefix="sa_tenancy_bench_drift") as url:
            results["drift"] = bench_drift(url, args.drift)
        print("drift:")
        for key, value in results["drift"].items():
            print(f"  {key}: {value}")
    if args.json:
        _harness.write_json(args.json, env=env, results=results)
    return 0
