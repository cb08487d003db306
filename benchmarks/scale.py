"""scale: does anything degrade between 10 and 10,000 tenant schemas?

Tenants are added in steps (default 10 and 1,000; 10,000 on request; each has the three tables of
:mod:`benchmarks.overhead`, seeded). After each step:

create time
    per tenant, for the batched set-up script (schema, three tables, one index, seed rows) and
    for :func:`sa_tenancy.create_tenant` (one transaction per tenant), on a sample.
catalog size
    relations in ``pg_class``, the size of the ``pg_catalog`` tables, the database size.
planning time
    ``EXPLAIN (SUMMARY)`` of the ``select_pk`` query on a sample of tenants, on a fresh
    backend: the first time a backend plans for a tenant (its catalog entries are loaded) and
    the second time.
SQLAlchemy and the client
    one engine per strategy serves one transaction of each unit of work
    (:mod:`benchmarks.overhead`) on the first 10 tenants, and a read and an update on *every*
    tenant so far; then the size of SQLAlchemy's compiled-statement LRU the tenant statements
    use (the engine's; ``translate_map`` keeps one of its own) and this process's RSS. With
    ``schema_translate_map`` the tenant is applied after compilation and is not part of the
    cache key; with
    ``search_path`` SQLAlchemy never sees the tenant. Neither may grow per tenant.
warm transactions
    ``select_pk`` round-robin over 10 tenants against round-robin over all of them, per strategy
    (interleaved, ratio to search_path over 10), and the private memory of the backend that
    served them (``/proc/<pid>/smaps_rollup``: a backend keeps the catalog entries of every
    table it touched), with and without ``install(..., max_tenants_per_connection=N)``
    (``--limit``, default 100): a third engine, ``search_path`` with the limit, serves the same
    transactions, and its backend is replaced after every N tenants.

Run::

    python -m benchmarks scale                           # 10 and 1,000 tenants
    python -m benchmarks scale --tenants 10,1000,10000   # ~10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import time
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

import sa_tenancy

from . import _harness
from .alternatives import private_memory
from .overhead import SYNC_OPS
from .overhead import Base
from .overhead import Item
from .overhead import create_schemas
from .overhead import select_pk
from .overhead import sync_runner
from .overhead import update

STRATEGIES = ("search_path", "translate_map")
LIMITED = "search_path+limit"
_PLANNING = re.compile(r"Planning Time: ([0-9.]+) ms")


def catalog(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM pg_class), "
                "(SELECT count(*) FROM pg_namespace), "
                "(SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                " JOIN pg_namespace n ON n.oid = c.relnamespace "
                " WHERE n.nspname = 'pg_catalog' AND c.relkind = 'r'), "
                "pg_database_size(current_database())"
            )
        ).one()
    return {
        "pg_class_rows": int(row[0]),
        "schemas": int(row[1]),
        "catalog_mb": float(row[2]) / 2**20,
        "database_mb": float(row[3]) / 2**20,
    }


def planning(url: str, tenants: list[str]) -> dict[str, float]:
    """Median planning time (ms), first and second time, on one fresh backend."""
    engine = create_engine(url, poolclass=None)
    query = select(Item).where(Item.id == 1)
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    first: list[float] = []
    second: list[float] = []
    try:
        with engine.connect() as conn:
            quote = conn.dialect.identifier_preparer.quote_identifier
            for tenant in tenants:
                conn.exec_driver_sql(f"SET LOCAL search_path TO {quote(tenant)}")
                for bucket in (first, second):
                    plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN (SUMMARY) {sql}"))
                    found = _PLANNING.search(plan)
                    assert found, plan
                    bucket.append(float(found.group(1)))
                conn.rollback()
    finally:
        engine.dispose()
    return {"plan_first_ms": statistics.median(first), "plan_again_ms": statistics.median(second)}


def create_tenant_time(engine: Engine, start: int, count: int) -> float:
    """Seconds per tenant for ``sa_tenancy.create_tenant`` (dropped again afterwards)."""
    names = [f"lib_{start + i:05d}" for i in range(count)]
    t0 = time.perf_counter()
    for name in names:
        sa_tenancy.create_tenant(engine, name, metadata=Base.metadata)
    elapsed = time.perf_counter() - t0
    for name in names:
        sa_tenancy.drop_tenant(engine, name)
    return elapsed / count


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks scale", description=__doc__.split("\n")[0]
    )
    _harness.add_common_args(parser, n=50, repeat=9)
    parser.add_argument(
        "--tenants",
        default="10,1000",
        help="tenant counts to reach, ascending (default %(default)s)",
    )
    parser.add_argument(
        "--sample", type=int, default=50, help="tenants sampled for planning (default 50)"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=100,
        help="max_tenants_per_connection of the third engine (default %(default)s)",
    )
    args = _harness.parse(parser, argv)
    steps = sorted({int(v) for v in args.tenants.split(",") if v})
    if not steps or steps[0] < 10 or steps[-1] > 20000:
        parser.error("--tenants: counts between 10 and 20000")

    env = _harness.environment(args.dburl)
    print(f"# scale — {_harness.format_environment(env)}")
    results: list[dict[str, Any]] = []
    with _harness.scratch_database(args.dburl) as url:
        setup = create_engine(url)
        names = (*STRATEGIES, LIMITED)
        engines = {s: create_engine(url, pool_size=1, max_overflow=0) for s in names}
        factories = {}
        for name, engine in engines.items():
            factories[name] = sessionmaker(engine, expire_on_commit=False)
            limit = args.limit if name == LIMITED else None
            strategy = name.split("+")[0]
            sa_tenancy.install(factories[name], strategy=strategy, max_tenants_per_connection=limit)
        tenants: list[str] = []
        served = 0
        try:
            for step in steps:
                new = [f"bench_{i:05d}" for i in range(len(tenants), step)]
                t0 = time.perf_counter()
                create_schemas(setup, new, batch=100)
                script_s = (time.perf_counter() - t0) / max(len(new), 1)
                tenants.extend(new)
                # autocommit: ANALYZE takes one transaction per table instead of locking every
                # table of 10,000 schemas at once (the lock table would run out)
                with setup.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                    quote = conn.dialect.identifier_preparer.quote_identifier
                    for schema in new:
                        for table in ("items", "parents", "children"):
                            conn.exec_driver_sql(f"ANALYZE {quote(schema)}.{table}")
                row: dict[str, Any] = {
                    "tenants": step,
                    "create_script_ms": script_s * 1e3,
                    "create_tenant_ms": create_tenant_time(setup, step, 20) * 1e3,
                }
                row.update(catalog(setup))
                spread = tenants[:: max(1, len(tenants) // args.sample)][: args.sample]
                row.update(planning(url, spread))
                # every unit of work on the first 10 tenants; a read and a flush (update) on
                # every tenant not served yet; both engines
                for factory in factories.values():
                    for i, tenant in enumerate(tenants[served:], start=served):
                        ops = SYNC_OPS.values() if i < 10 else (select_pk, update)
                        for op in ops:
                            with factory(info={"schema": tenant}) as session:
                                op(session, i)
                served = len(tenants)
                gc.collect()
                for strategy in STRATEGIES:
                    row[f"compiled_cache_{strategy}"] = compiled_cache_size(
                        factories[strategy], engines[strategy]
                    )
                # the ORM caches flush statements (INSERT/UPDATE) per mapper, not per engine
                row["flush_cache"] = sum(len(m._compiled_cache) for m in Base.registry.mappers)
                row["client_rss_mb"] = _harness.rss_bytes() / 2**20
                row["warm"] = warm(factories, engines, tenants, args)
                results.append(row)
                print()
                print(step_table(row))
        finally:
            for engine in engines.values():
                engine.dispose()
            setup.dispose()
    print()
    print(summary(results))
    if args.json:
        _harness.write_json(args.json, env=env, results=results)
    return 0


def warm(
    factories: dict[str, Any],
    engines: dict[str, Engine],
    tenants: list[str],
    args: argparse.Namespace,
) -> list[_harness.Measurement]:
    runners = {}
    for strategy, factory in factories.items():
        runners[f"{strategy} @10"] = sync_runner(factory, select_pk, tenants[:10])
        if len(tenants) > 10:
            runners[f"{strategy} @{len(tenants)}"] = sync_runner(factory, select_pk, tenants)
    measured = _harness.compare(
        runners, baseline="search_path @10", n=args.n, repeat=args.repeat, budget=90.0
    )
    limited = limited_backend_memory(factories[LIMITED], engines[LIMITED], tenants, args.limit)
    for m in measured:
        strategy = m.name.split()[0]
        if strategy == LIMITED:
            memory = limited
        else:
            with engines[strategy].connect() as conn:  # no SQL: nothing new in the cache
                pid = conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
            memory = private_memory(pid)
        m.extra = {"backend_private_mb": None if memory is None else memory / 2**20}
    return measured


def compiled_cache_size(factory: Any, engine: Engine) -> int:
    """Entries in the compiled cache tenant statements use (translate_map keeps its own)."""
    installation = sa_tenancy.installation_of(factory)
    assert installation is not None
    strategy = installation.strategy
    if isinstance(strategy, sa_tenancy.TranslateMap):
        return len(strategy._cache_for(engine) or ())
    return len(engine._compiled_cache or ())


def limited_backend_memory(factory: Any, engine: Engine, tenants: list[str], limit: int) -> Any:
    """Private memory of a backend that has served ``limit`` tenants: the most it can hold.

    With the limit, a backend is replaced at check-in once it has served ``limit`` tenants; so
    start from a new one, serve ``limit`` tenants, and read its memory inside the last session.
    """
    engine.dispose()
    subset = tenants[:limit]
    for i, tenant in enumerate(subset[:-1]):
        with factory(info={"schema": tenant}) as session:
            select_pk(session, i)
    with factory(info={"schema": subset[-1]}) as session:
        select_pk(session, len(subset) - 1)
        pid = session.connection().connection.driver_connection.info.backend_pid
        return private_memory(pid)


def step_table(row: dict[str, Any]) -> str:
    lines = [
        f"**{row['tenants']} tenants**",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| create, batched script, ms/tenant | {row['create_script_ms']:.1f} |",
        f"| create_tenant(), ms/tenant | {row['create_tenant_ms']:.1f} |",
        f"| pg_class rows | {row['pg_class_rows']} |",
        f"| pg_catalog size MB | {row['catalog_mb']:.1f} |",
        f"| database size MB | {row['database_mb']:.1f} |",
        f"| planning, first time for a tenant on a backend, ms | {row['plan_first_ms']:.3f} |",
        f"| planning, again, ms | {row['plan_again_ms']:.3f} |",
        f"| compiled cache entries, search_path engine | {row['compiled_cache_search_path']} |",
        f"| compiled cache entries, translate_map engine | {row['compiled_cache_translate_map']} |",
        f"| ORM flush statement cache entries (mappers) | {row['flush_cache']} |",
        f"| client RSS MB (after serving every tenant) | {row['client_rss_mb']:.1f} |",
    ]
    table = "\n".join(lines)
    warm_rows = row["warm"]
    warm_table = _harness.format_table("warm select_pk, round-robin", warm_rows)
    memory = ", ".join(
        f"{m.name}: {m.extra['backend_private_mb']:.0f} MB"
        for m in warm_rows
        if m.extra.get("backend_private_mb") is not None and m.name.endswith("@10")
    )
    return f"{table}\n\n{warm_table}\n\nbackend private memory after serving: {memory}"


def summary(results: list[dict[str, Any]]) -> str:
    lines = [
        "**Summary**",
        "",
        "| tenants | create ms/tenant (script / create_tenant) | pg_class rows | catalog MB "
        "| plan ms (first / again) | compiled cache (search_path / translate_map / flush) "
        "| client RSS MB | warm ratio @all vs @10 (search_path / translate_map / with limit) "
        "| backend private MB (search_path / translate_map / with limit) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratios = {m.name: m.ratio for m in r["warm"]}
        n = r["tenants"]
        sp = ratios.get(f"search_path @{n}", 1.0) / ratios["search_path @10"]
        tm = (
            ratios.get(f"translate_map @{n}", ratios["translate_map @10"])
            / ratios["translate_map @10"]
        )
        lm = ratios.get(f"{LIMITED} @{n}", ratios[f"{LIMITED} @10"]) / ratios["search_path @10"]
        memory = {m.name.split()[0]: m.extra.get("backend_private_mb") for m in r["warm"]}
        mb = " / ".join(
            "?" if memory.get(name) is None else f"{memory[name]:.0f}"
            for name in (*STRATEGIES, LIMITED)
        )
        lines.append(
            f"| {n} | {r['create_script_ms']:.1f} / {r['create_tenant_ms']:.1f} "
            f"| {r['pg_class_rows']} | {r['catalog_mb']:.0f} "
            f"| {r['plan_first_ms']:.3f} / {r['plan_again_ms']:.3f} "
            f"| {r['compiled_cache_search_path']} / {r['compiled_cache_translate_map']} "
            f"/ {r['flush_cache']} "
            f"| {r['client_rss_mb']:.1f} | {sp:.2f} / {tm:.2f} / {lm:.2f} | {mb} |"
        )
    return "\n".join(lines)
