"""Shared timing helpers for the benchmark suites (not a suite itself).

Every suite compares candidates with a baseline *in the same run*: on a small, noisy machine
absolute times drift from minute to minute, so a number only means something next to the
baseline measured between the same two ticks of the clock. :func:`compare` therefore runs the
candidates interleaved (A B C, B C A, C A B, ... rotating the start so no candidate always runs
first after a pause), repeats that ``repeat`` times, and reports for each candidate the median,
min and max time per operation and the ratio of its median to the baseline's median. Two more
figures resist a machine whose load changes during the run: the *paired* ratio, the median over
rounds of (candidate ÷ baseline in the same round), the ratio of the 10th percentiles (with
``--n 1`` every sample is one operation: the least disturbed ones), and the ratio of this
process's CPU time per operation (client work only: server time and waiting on the network do
not count).

The stable API used by the suites:

- :func:`add_common_args` / :func:`parse` — ``--dburl``, ``--n``, ``--repeat``, ``--json``;
- :func:`scratch_database` — a database of the run's own (``sa_tenancy_bench_<random>``),
  dropped at the end, so benchmarks never touch anyone's ``public`` schema. On a Citus
  coordinator a new database would have no ``citus`` extension (the run would measure plain
  PostgreSQL): there the run goes in place in ``--dburl``'s database only with
  ``SA_TENANCY_BENCH_IN_PLACE=1`` (see :func:`scratch_database`);
- :func:`compare` → list of :class:`Measurement`; :func:`format_table` prints them;
- :func:`environment` — versions, cores and date, recorded with every result;
- :func:`rss_bytes` — this process's resident set size;
- :func:`write_json` — the ``--json FILE`` output (``{"environment": ..., "results": ...}``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy import make_url
from sqlalchemy import text

__all__ = [
    "DEFAULT_URL",
    "Measurement",
    "add_common_args",
    "compare",
    "environment",
    "format_environment",
    "format_table",
    "parse",
    "rss_bytes",
    "scratch_database",
    "write_json",
]

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass
class Measurement:
    """One candidate's timings: seconds per operation for each repetition."""

    name: str
    samples: list[float]
    baseline: str
    ratio: float = 1.0
    paired: float = 1.0  # median over rounds of this / baseline in the same round
    p10_ratio: float = 1.0  # 10th percentile of samples / the baseline's 10th percentile
    cpu: list[float] = field(default_factory=list)  # process CPU seconds per operation
    cpu_ratio: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median=self.median, min=self.min, max=self.max)
        return data

    @property
    def p10(self) -> float:
        """10th percentile of the samples: the least disturbed runs, on a busy machine."""
        return _p10(self.samples)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else 0.0


def add_common_args(parser: argparse.ArgumentParser, *, n: int, repeat: int = 7) -> None:
    """``--dburl``, ``--n`` (operations per sample), ``--repeat`` (samples), ``--json FILE``."""
    parser.add_argument(
        "--dburl",
        default=DEFAULT_URL,
        help="server to benchmark; a scratch database is created there and dropped "
        f"(default {DEFAULT_URL})",
    )
    parser.add_argument("--n", type=int, default=n, help=f"operations per sample (default {n})")
    parser.add_argument(
        "--repeat", type=int, default=repeat, help=f"interleaved samples (default {repeat})"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1:
        parser.error("--n and --repeat must be at least 1")
    return args


#: Set to 1 to benchmark in ``--dburl``'s own database (a Citus coordinator's, say).
IN_PLACE_ENV = "SA_TENANCY_BENCH_IN_PLACE"


@contextlib.contextmanager
def scratch_database(url: str, *, prefix: str = "sa_tenancy_bench") -> Iterator[str]:
    """Create ``<prefix>_<random>`` on ``url``'s server, yield its URL, drop it afterwards.

    When ``url``'s database has the ``citus`` extension, a scratch database would not (and
    ``CREATE DATABASE`` is not propagated to the workers), so the run would silently measure
    plain PostgreSQL. With ``SA_TENANCY_BENCH_IN_PLACE=1`` the run works in ``url``'s database
    itself and drops, at the end, every schema and every ``public`` table that appeared during
    the run (and the ledger rows of dropped schemas): give it a database of its own. Without
    the variable a Citus database is refused with that advice.
    """
    if _has_citus(url):
        if os.environ.get(IN_PLACE_ENV) != "1":
            raise SystemExit(
                f"{url}: a Citus coordinator; a scratch database would have no citus extension. "
                f"Set {IN_PLACE_ENV}=1 to benchmark in this database (schemas and public tables "
                "the run creates are dropped at the end: use a database of its own)"
            )
        with _in_place(url):
            yield url
        return
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    # SIGTERM (timeout, kill) would end the process without running the DROP below.
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=None)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=None)
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous)


def _has_citus(url: str) -> bool:
    if not url.startswith("postgresql"):
        return False
    engine = create_engine(url, poolclass=None)
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'citus'"))
            return found.first() is not None
    finally:
        engine.dispose()


_SNAPSHOT = text(
    "SELECT 's' || nspname FROM pg_namespace UNION ALL "
    "SELECT 't' || relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
    "AND relkind IN ('r', 'p')"
)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def _in_place(url: str) -> Iterator[None]:
    """Run in ``url``'s database; drop what the run created there (schemas, public tables)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=None)
    try:
        with engine.connect() as conn:
            before = set(conn.execute(_SNAPSHOT).scalars())
        yield
    finally:
        try:
            with engine.connect() as conn:
                new = set(conn.execute(_SNAPSHOT).scalars()) - before
                schemas = sorted(item[1:] for item in new if item[0] == "s")
                tables = sorted(item[1:] for item in new if item[0] == "t")
                ledger = conn.execute(text("SELECT to_regclass('sa_tenancy.tenant_versions')"))
                if schemas and ledger.scalar() is not None:
                    conn.execute(
                        text("DELETE FROM sa_tenancy.tenant_versions WHERE schema_name = ANY(:s)"),
                        {"s": schemas},
                    )
                for name in schemas:
                    conn.execute(text(f"DROP SCHEMA IF EXISTS {_quote(name)} CASCADE"))
                for name in tables:
                    conn.execute(text(f"DROP TABLE IF EXISTS public.{_quote(name)} CASCADE"))
        finally:
            engine.dispose()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def compare(
    candidates: Mapping[str, Callable[[int], object]],
    *,
    baseline: str,
    n: int,
    repeat: int,
    warmup: int = 1,
    budget: float | None = None,
) -> list[Measurement]:
    """Time ``candidates`` interleaved; each callable runs ``n`` operations per call.

    :param baseline: the candidate the ratios are relative to.
    :param warmup: untimed rounds first (connections, caches, prepared statements).
    :param budget: seconds; stop repeating once exceeded (at least one timed round runs).
    """
    if baseline not in candidates:
        raise ValueError(f"baseline {baseline!r} is not one of {list(candidates)}")
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name](n)
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    for round_ in range(repeat):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            c0 = time.process_time()
            t0 = time.perf_counter()
            candidates[name](n)
            samples[name].append((time.perf_counter() - t0) / n)
            cpu[name].append((time.process_time() - c0) / n)
        if budget is not None and time.perf_counter() - started > budget:
            break
    base = statistics.median(samples[baseline])
    base_cpu = statistics.median(cpu[baseline]) or 1e-12
    result = []
    for name in names:
        paired = [a / b for a, b in zip(samples[name], samples[baseline], strict=True)]
        result.append(
            Measurement(
                name,
                samples[name],
                baseline,
                ratio=statistics.median(samples[name]) / base,
                paired=statistics.median(paired),
                p10_ratio=_p10(samples[name]) / _p10(samples[baseline]),
                cpu=cpu[name],
                cpu_ratio=statistics.median(cpu[name]) / base_cpu,
            )
        )
    return result


def _p10(values: list[float]) -> float:
    if len(values) < 10:
        return min(values)
    return statistics.quantiles(values, n=10)[0]


def format_table(title: str, measurements: list[Measurement], *, unit: str = "µs") -> str:
    """A Markdown table: median, min, max per operation; ratios to the baseline.

    ``ratio``: median ÷ baseline median; ``paired``: median of same-round ratios; ``p10``: ratio
    of the 10th percentiles; ``cpu``: ratio of client CPU time per operation.
    """
    scale = {"µs": 1e6, "ms": 1e3, "s": 1.0}[unit]
    lines = [
        f"**{title}**",
        "",
        f"| candidate | median {unit} | min {unit} | max {unit} | ratio | paired | p10 | cpu |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        lines.append(
            f"| {m.name} | {m.median * scale:.1f} | {m.min * scale:.1f} | "
            f"{m.max * scale:.1f} | {m.ratio:.3f} | {m.paired:.3f} | {m.p10_ratio:.3f} "
            f"| {m.cpu_ratio:.3f} |"
        )
    return "\n".join(lines)


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed is an answer, not an error
        return None


def environment(url: str | None = None) -> dict[str, Any]:
    """Versions, cores and date of this run; the server version if ``url`` answers."""
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "sqlalchemy": _version("sqlalchemy"),
        "psycopg": _version("psycopg"),
        "asyncpg": _version("asyncpg"),
        "load average (1 min)": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
    }
    if url is not None:
        engine = create_engine(url, poolclass=None)
        try:
            with engine.connect() as conn:
                env["server"] = conn.execute(text("SHOW server_version")).scalar()
        except Exception as exc:  # record why, keep going
            env["server"] = f"unavailable: {exc.__class__.__name__}"
        finally:
            engine.dispose()
    return env


def format_environment(env: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in env.items() if value is not None)


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/status`` (0 where unavailable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def write_json(path: str, *, env: Mapping[str, Any], results: Any) -> None:
    """Write ``{"environment": env, "results": results}``; Measurements become dicts."""

    def default(obj: object) -> Any:
        if isinstance(obj, Measurement):
            return obj.as_dict()
        raise TypeError(f"cannot serialise {type(obj).__name__}")

    with open(path, "w", encoding="utf-8") as out:
        json.dump({"environment": dict(env), "results": results}, out, indent=2, default=default)
        out.write("\n")
