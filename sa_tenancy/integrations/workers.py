"""Scripts, CLI commands and job workers: a session per tenant, and a loop over tenants.

Outside a web request nobody resolves a tenant for you: the job names it. A task queue passes it
as a task argument; a maintenance script loops over the tenants. Either way the tenant goes into
the session the job makes, exactly as in a request, and nowhere else.

:func:`tenant_session`
    ``with tenant_session(SessionLocal, "acme") as session:``. It validates the name with the
    installation's policy before anything is sent, refuses a factory without an installation
    (whose sessions would silently use the default schema), and closes the session at the end
    (rolling back whatever was not committed).

:func:`for_each_tenant`
    Runs ``fn(session, schema)`` once per tenant (all tenants by default), each in its own
    session and transaction, committed when ``fn`` returns and rolled back when it raises, with
    at most ``jobs`` tenants in flight (threads: each has its own session and connection, so
    nothing is shared but the engine's pool). It prints a progress line to stderr and returns a
    :class:`TenantRun`: every tenant's result or exception. One tenant's failure does not stop
    the others. A tenant that does not exist is a failure of that tenant; nothing ever runs
    against the default schema instead.

    Under the ``translate_map`` strategy a tenant's absence is only noticed by its first
    statement; ``fn`` that sends none succeeds (and did nothing anywhere).

Both take a ``sessionmaker`` (a ``scoped_session`` stands for its ``sessionmaker``: a job's
session must not stay behind in a registry), or an integration that knows how its sessions are
made outside a request, such as a :class:`~sa_tenancy.integrations.flask.FlaskTenancy` over
Flask-SQLAlchemy, whose sessions find their engine through the app: each session then runs
inside the app's context, pushed in the thread that uses it. ``db.session`` itself is refused
with a message saying so, because outside an app context it cannot even start.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait
from contextlib import AbstractContextManager
from contextlib import contextmanager
from contextlib import nullcontext
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Generic
from typing import Protocol
from typing import TextIO
from typing import TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

from .._auto import Auto
from .._namespace import check as check_namespace
from ..exc import TenancyError
from ..exc import UnknownSchema
from ..lifecycle import list_tenants
from ..listener import Installation
from ..sqlite import SQLiteFiles
from ._errors import bind_of
from ._errors import tenant_missing
from ._resolve import require_installation

__all__ = [
    "HasJobs",
    "JobSource",
    "TenantJobsFailed",
    "TenantRun",
    "for_each_tenant",
    "tenant_session",
]

_S = TypeVar("_S", bound=Session)
_S_co = TypeVar("_S_co", bound=Session, covariant=True)
_T = TypeVar("_T")


def _no_engine() -> Engine | None:
    return None


@dataclass(frozen=True)
class JobSource(Generic[_S_co]):
    """How jobs make tenant sessions of an integration (what ``_sa_tenancy_jobs()`` returns).

    :param factory: the installed ``sessionmaker``.
    :param context: entered around each session, in the thread that uses it (e.g. a Flask app
        context); and around listing the tenants.
    :param engine: the engine whose tenants to list (called inside ``context``).
    """

    factory: Callable[..., _S_co]
    context: Callable[[], AbstractContextManager[object]] = nullcontext
    engine: Callable[[], Engine | None] = _no_engine


class HasJobs(Protocol[_S_co]):
    """An integration that jobs accept in place of a session factory (``FlaskTenancy``)."""

    def _sa_tenancy_jobs(self) -> JobSource[_S_co]: ...


def _flask_sqlalchemy_class(factory: object) -> bool:
    fsa = sys.modules.get("flask_sqlalchemy")
    return (
        fsa is not None
        and isinstance(factory, sessionmaker)
        and issubclass(factory.class_, fsa.session.Session)
    )


def _source_of(target: Any) -> JobSource[Any]:
    jobs = getattr(target, "_sa_tenancy_jobs", None)
    if callable(jobs):
        source: JobSource[Any] = jobs()
        return source
    factory = target.session_factory if isinstance(target, scoped_session) else target
    if _flask_sqlalchemy_class(factory):
        raise TenancyError(
            "Flask-SQLAlchemy sessions need an app context to find their engine: pass the "
            "FlaskTenancy(db) instead of db.session, e.g. tenant_session(tenancy, 'acme')"
        )
    return JobSource(factory, engine=lambda: _engine_of(factory))


@contextmanager
def tenant_session(factory: Callable[..., _S] | HasJobs[_S], schema: str) -> Iterator[_S]:
    """A session of ``factory`` for tenant ``schema``, closed (and so rolled back) at the end.

    Commit inside the block what should be kept.

    :param factory: an installed ``sessionmaker`` (or ``scoped_session``), or a
        ``FlaskTenancy``.
    :raises InvalidSchemaName: before any SQL, if the installation's policy rejects ``schema``.
    :raises TenancyError: if sa_tenancy is not installed on ``factory``.

    Example::

        with tenant_session(SessionLocal, "acme") as session:
            session.add(Invoice(...))
            session.commit()
    """
    with _tenant_session(_source_of(factory), schema) as session:
        yield session


@contextmanager
def _tenant_session(source: JobSource[_S], schema: str) -> Iterator[_S]:
    installation = require_installation(source.factory)
    schema = installation.names.validate(schema)
    with source.context():
        session = source.factory(info={installation.info_key: schema})
        try:
            yield session
        finally:
            session.close()


class TenantJobsFailed(TenancyError):
    """:meth:`TenantRun.raise_for_failures`: some tenants failed; ``run`` has the details."""

    def __init__(self, run: TenantRun[Any]) -> None:
        super().__init__(run.report())
        self.run = run


TenantJobsFailed.__module__ = "sa_tenancy.integrations.workers"


@dataclass
class TenantRun(Generic[_T]):
    """What :func:`for_each_tenant` did: per-tenant results and failures, in tenant order."""

    tenants: list[str]
    results: dict[str, _T] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every tenant succeeded."""
        return not self.failures and len(self.results) == len(self.tenants)

    @property
    def done(self) -> int:
        """How many tenants finished, successfully or not."""
        return len(self.results) + len(self.failures)

    def report(self) -> str:
        """A human-readable summary: counts, then one line per failed tenant."""
        lines = [
            f"{len(self.results)} of {len(self.tenants)} tenants succeeded, "
            f"{len(self.failures)} failed, in {self.elapsed:.1f}s"
        ]
        for schema in self.tenants:
            if schema in self.failures:
                exc = self.failures[schema]
                lines.append(f"  {schema}: {type(exc).__name__}: {exc}")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise :class:`TenantJobsFailed` if any tenant failed."""
        if self.failures:
            raise TenantJobsFailed(self)


class _Progress:
    """One progress line on a stream: rewritten in place on a terminal, else every interval."""

    def __init__(self, stream: TextIO | None, total: int, interval: float) -> None:
        self.stream = stream
        self.total = total
        self.interval = interval
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.started = self.last = time.monotonic()

    def update(self, run: TenantRun[Any], *, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        line = (
            f"tenants {run.done}/{self.total}, {len(run.failures)} failed, "
            f"{run.done / elapsed:.1f}/s"
        )
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def _sqlite_directory(installation: Installation) -> Any:
    strategy = installation.strategy
    if isinstance(strategy, Auto):
        strategy = strategy.by_dialect.get("sqlite", strategy.default)
    return strategy.directory if isinstance(strategy, SQLiteFiles) else None


def _engine_of(factory: Any) -> Engine | None:
    kw = getattr(factory, "kw", None)
    bind = kw.get("bind") if isinstance(kw, dict) else None
    return bind if isinstance(bind, Engine) else None


def _run_one(source: JobSource[_S], schema: str, fn: Callable[[_S, str], _T]) -> _T:
    with _tenant_session(source, schema) as session:
        try:
            result = fn(session, schema)
            session.commit()
        except Exception as exc:
            bind = bind_of(session)
            session.close()
            if not isinstance(exc, UnknownSchema) and tenant_missing(exc, bind, schema):
                raise UnknownSchema(f"tenant {schema!r} does not exist") from exc
            raise
        return result


def for_each_tenant(
    factory: Callable[..., _S] | HasJobs[_S],
    fn: Callable[[_S, str], _T],
    *,
    tenants: Iterable[str] | None = None,
    jobs: int = 4,
    bind: Engine | None = None,
    progress: TextIO | bool = True,
    progress_interval: float = 1.0,
    namespace: str | None = None,
) -> TenantRun[_T]:
    """Run ``fn(session, schema)`` for every tenant, at most ``jobs`` at a time.

    :param factory: a ``sessionmaker`` that :func:`sa_tenancy.install` was called on, or a
        ``FlaskTenancy``.
    :param fn: called with a fresh session for the tenant and the tenant's name. Its work is
        committed when it returns and rolled back when it raises; its return value is the
        tenant's result.
    :param tenants: the tenants to visit; default: :func:`sa_tenancy.list_tenants` of ``bind``.
        Duplicates are visited once. A name that does not exist is reported as that tenant's
        failure; there is never a fallback to the default schema.
    :param jobs: how many tenants run at once (threads). Keep it within the engine's pool size
        plus overflow, or threads wait for connections.
    :param bind: the engine whose tenants to list; default: the ``sessionmaker``'s bind.
    :param progress: where the progress line goes: ``True`` (default) for ``sys.stderr``,
        ``False`` for nowhere, or a text stream.
    :param progress_interval: seconds between progress lines.
    :param namespace: whose tenants to list when ``tenants`` is not given (default: the
        default namespace); another namespace's tenants are never visited.
    :returns: a :class:`TenantRun`; call ``raise_for_failures()`` to turn failures into an error.
    :raises TenancyError: before running anything, if sa_tenancy is not installed on
        ``factory``, or ``tenants`` is not given and no engine is known to list them.

    ``KeyboardInterrupt`` stops scheduling; tenants already running finish their transaction.
    """
    ns = check_namespace(namespace)  # an invalid namespace fails before anything runs
    source = _source_of(factory)
    installation = require_installation(source.factory)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise TenancyError(f"jobs must be a positive int, not {jobs!r}")
    if tenants is None:
        with source.context():
            engine = bind or source.engine()
            if engine is None:
                raise TenancyError(
                    "cannot list the tenants: pass tenants=[...] or bind=engine "
                    "(the factory has no engine bound)"
                )
            names = list_tenants(
                engine, directory=_sqlite_directory(installation), namespace=ns or None
            )
    else:
        if isinstance(tenants, str):
            raise TenancyError("tenants must be a collection of names, not a single str")
        names = list(dict.fromkeys(tenants))
    stream = (sys.stderr if progress else None) if isinstance(progress, bool) else progress
    run: TenantRun[_T] = TenantRun(tenants=names)
    meter = _Progress(stream, len(names), progress_interval)
    started = time.monotonic()
    pending = iter(names)
    in_flight: dict[Future[_T], str] = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="sa_tenancy") as pool:
        try:
            while True:
                # Submit lazily: at most `jobs` futures exist, whatever the number of tenants.
                while len(in_flight) < jobs:
                    schema = next(pending, None)
                    if schema is None:
                        break
                    in_flight[pool.submit(_run_one, source, schema, fn)] = schema
                if not in_flight:
                    break
                finished, _ = wait(
                    in_flight, timeout=progress_interval, return_when=FIRST_COMPLETED
                )
                for future in finished:
                    schema = in_flight.pop(future)
                    exc = future.exception()
                    if exc is None:
                        run.results[schema] = future.result()
                    else:
                        run.failures[schema] = exc
                meter.update(run)
        finally:
            for future in in_flight:
                future.cancel()
    run.results = {n: run.results[n] for n in names if n in run.results}
    run.failures = {n: run.failures[n] for n in names if n in run.failures}
    run.elapsed = time.monotonic() - started
    meter.update(run, final=True)
    return run
