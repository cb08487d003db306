"""alternatives: sa_tenancy against what people build instead, at 10, 100 and 1,000 tenants.

Candidates, each serving every tenant round-robin with a ``select_pk`` transaction
(see :mod:`benchmarks.overhead`):

``search_path`` (baseline) / ``translate_map``
    one engine (``pool_size=1``), one ``sessionmaker``, ``sa_tenancy.install(...)``.
``engine_per_tenant``
    a dict of engines, one per tenant, each connecting with ``options=-c search_path=<tenant>``
    (``pool_size=1``): the tenant is fixed per connection, so every tenant holds a backend.
``sessionmaker_per_tenant``
    one engine, one ``sessionmaker`` per tenant bound to
    ``engine.execution_options(schema_translate_map={None: tenant})``.

Reported per tenant count: warm time per transaction (interleaved, ratio to the baseline),
the cold first transaction per tenant (median and max over tenants: for engine-per-tenant
this includes connecting), server backends each candidate opened (``pg_stat_activity``,
attributed by ``application_name``), their private memory (``/proc/<pid>/smaps_rollup``:
``Private_Clean + Private_Dirty``; the server must be local) and the growth of this process's
RSS while the candidate served every tenant once.

Backends: engine-per-tenant needs one backend per tenant. By default the suite runs on a
throwaway cluster (``initdb``, ``max_connections=1200``) so 1,000 backends never touch a shared
server; with ``--no-cluster`` it uses ``--dburl`` and caps engine-per-tenant at the free
connection slots minus a margin of 20, saying so in the output.

Run::

    python -m benchmarks alternatives                      # throwaway cluster, 10/100/1000
    python -m benchmarks alternatives --no-cluster --dburl postgresql+psycopg://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import statistics
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

import sa_tenancy

from . import _harness
from .overhead import create_schemas
from .overhead import select_pk

CANDIDATES = ("search_path", "translate_map", "engine_per_tenant", "sessionmaker_per_tenant")
MARGIN = 20  # connection slots left free on a shared server


def private_memory(pid: int) -> int | None:
    """Private (unshared) bytes of process ``pid``, or None if /proc does not say."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            total = 0
            for line in rollup:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
            return total
    except OSError:
        return None


class Candidate:
    """One way of serving tenants: a factory per tenant, engines to dispose."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.engines: list[Engine] = []
        self._per_tenant: dict[str, Any] = {}
        args = {"application_name": f"bench_{name}"}
        if name in ("search_path", "translate_map"):
            engine = create_engine(url, pool_size=1, max_overflow=0, connect_args=args)
            self.engines.append(engine)
            self._shared: Any = sessionmaker(engine, expire_on_commit=False)
            sa_tenancy.install(self._shared, strategy=name)
        elif name == "sessionmaker_per_tenant":
            self._engine = create_engine(url, pool_size=1, max_overflow=0, connect_args=args)
            self.engines.append(self._engine)

    def factory(self, tenant: str) -> Any:
        if self.name in ("search_path", "translate_map"):
            return self._shared
        found = self._per_tenant.get(tenant)
        if found is None:
            if self.name == "engine_per_tenant":
                engine = create_engine(
                    self.url,
                    pool_size=1,
                    max_overflow=0,
                    connect_args={
                        "application_name": f"bench_{self.name}",
                        "options": f"-c search_path={tenant}",
                    },
                )
                self.engines.append(engine)
                found = sessionmaker(engine, expire_on_commit=False)
            else:
                bound = self._engine.execution_options(schema_translate_map={None: tenant})
                found = sessionmaker(bound, expire_on_commit=False)
            self._per_tenant[tenant] = found
        return found

    def runner(self, tenants: Sequence[str]) -> Callable[[int], None]:
        counter = itertools.count()
        count = len(tenants)

        def run(n: int) -> None:
            for _ in range(n):
                i = next(counter)
                tenant = tenants[i % count]
                with self.factory(tenant)(info={"schema": tenant}) as session:
                    select_pk(session, i)

        return run

    def dispose(self) -> None:
        for engine in self.engines:
            engine.dispose()


def backends(url: str) -> dict[str, list[int]]:
    """Backend pids per benchmark application_name on ``url``'s database."""
    engine = create_engine(url, poolclass=None)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT application_name, pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name LIKE 'bench_%'"
                )
            ).all()
    finally:
        engine.dispose()
    found: dict[str, list[int]] = {}
    for name, pid in rows:
        found.setdefault(name.removeprefix("bench_"), []).append(pid)
    return found


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[tuple[str, int, str]]:
    """``(url, free connection slots, note)``: a throwaway cluster or the given server."""
    if args.cluster:
        from sa_tenancy._cluster import Cluster

        with Cluster(settings={"max_connections": "1200"}) as cluster:
            yield cluster.url, 1200 - MARGIN, "throwaway cluster, max_connections=1200"
        return
    engine = create_engine(args.dburl, poolclass=None)
    try:
        with engine.connect() as conn:
            limit = int(conn.execute(text("SHOW max_connections")).scalar_one())
            used = int(conn.execute(text("SELECT count(*) FROM pg_stat_activity")).scalar_one())
    finally:
        engine.dispose()
    free = limit - used - MARGIN
    yield args.dburl, free, f"shared server: max_connections={limit}, {used} in use"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks alternatives", description=__doc__.split("\n")[0]
    )
    _harness.add_common_args(parser, n=50, repeat=9)
    parser.add_argument(
        "--tenants",
        default="10,100,1000",
        help="tenant counts, comma-separated (default %(default)s)",
    )
    parser.add_argument(
        "--no-cluster",
        dest="cluster",
        action="store_false",
        help="use --dburl (engine-per-tenant capped at its free connection slots)",
    )
    args = _harness.parse(parser, argv)
    counts = [int(v) for v in args.tenants.split(",") if v]
    if not counts or min(counts) < 1 or max(counts) > 5000:
        parser.error("--tenants: counts between 1 and 5000")

    results: list[dict[str, Any]] = []
    with server(args) as (server_url, free_slots, note):
        env = _harness.environment(server_url)
        env["server_note"] = note
        print(f"# alternatives — {_harness.format_environment(env)}")
        print(f"# warm: n={args.n} transactions per sample, repeat={args.repeat}")
        with _harness.scratch_database(server_url) as url:
            setup = create_engine(url)
            tenants = [f"bench_{i:05d}" for i in range(max(counts))]
            create_schemas(setup, tenants, batch=100)
            # autocommit: one transaction per table, not every table locked at once
            with setup.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                conn.execute(text("ANALYZE"))
            setup.dispose()
            for count in counts:
                results.append(run_count(url, tenants[:count], free_slots, args))
    print()
    print(summary(results))
    if args.json:
        _harness.write_json(args.json, env=env, results=results)
    return 0


def run_count(
    url: str, tenants: list[str], free_slots: int, args: argparse.Namespace
) -> dict[str, Any]:
    count = len(tenants)
    names = list(CANDIDATES)
    notes = []
    if count > free_slots:
        names.remove("engine_per_tenant")
        notes.append(
            f"engine_per_tenant skipped: {count} backends would exceed the {free_slots} free "
            "connection slots of this server (run on the default throwaway cluster)"
        )
    candidates = {name: Candidate(name, url) for name in names}
    cold: dict[str, list[float]] = {}
    rss: dict[str, int] = {}
    try:
        for name, candidate in candidates.items():  # cold pass: one at a time, for RSS
            gc.collect()
            before = _harness.rss_bytes()
            times = []
            for i, tenant in enumerate(tenants):
                t0 = time.perf_counter()
                with candidate.factory(tenant)(info={"schema": tenant}) as session:
                    select_pk(session, i)
                times.append(time.perf_counter() - t0)
            gc.collect()
            rss[name] = _harness.rss_bytes() - before
            cold[name] = times
        measured = _harness.compare(
            {name: c.runner(tenants) for name, c in candidates.items()},
            baseline="search_path",
            n=args.n,
            repeat=args.repeat,
            budget=120.0,
        )
        opened = backends(url)  # after the warm runs, before the engines close them
        memory = {name: [private_memory(pid) for pid in pids] for name, pids in opened.items()}
    finally:
        for candidate in candidates.values():
            candidate.dispose()
    rows = []
    for m in measured:
        pids = opened.get(m.name, [])
        known = [b for b in memory.get(m.name, []) if b is not None]
        m.extra = {
            "cold_median_ms": statistics.median(cold[m.name]) * 1e3,
            "cold_max_ms": max(cold[m.name]) * 1e3,
            "backends": len(pids),
            "backend_private_mb": sum(known) / 2**20 if known else None,
            "client_rss_growth_mb": rss[m.name] / 2**20,
        }
        rows.append(m)
    print()
    print(_harness.format_table(f"{count} tenants: warm select_pk transaction", rows))
    print()
    print(detail_table(rows))
    for line in notes:
        print(f"\nnote: {line}")
    return {"tenants": count, "rows": rows, "notes": notes}


def detail_table(rows: list[_harness.Measurement]) -> str:
    lines = [
        "| candidate | cold 1st tx median ms | cold max ms | backends | backend private MB "
        "| client RSS growth MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        e = m.extra
        memory = "n/a" if e["backend_private_mb"] is None else f"{e['backend_private_mb']:.1f}"
        lines.append(
            f"| {m.name} | {e['cold_median_ms']:.2f} | {e['cold_max_ms']:.2f} | {e['backends']} "
            f"| {memory} | {e['client_rss_growth_mb']:.1f} |"
        )
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> str:
    lines = [
        "**Summary** (warm ratio to sa_tenancy search_path; backends; backend private MB; "
        "client RSS growth MB)",
        "",
        "| tenants | candidate | warm ratio | backends | backend MB | client MB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for m in r["rows"]:
            e = m.extra
            memory = "n/a" if e["backend_private_mb"] is None else f"{e['backend_private_mb']:.1f}"
            lines.append(
                f"| {r['tenants']} | {m.name} | {m.ratio:.2f} | {e['backends']} | {memory} "
                f"| {e['client_rss_growth_mb']:.1f} |"
            )
        if r["notes"]:
            lines.append(f"| {r['tenants']} | engine_per_tenant | skipped (see note) | | | |")
    return "\n".join(lines)
