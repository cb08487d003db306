"""The isolation conformance check's scenarios: every way tenants come to share a connection.

A pooled connection reused after a commit, a rollback or an error; two tenant sessions open at
once on one connection (``StaticPool``, ``sessionmaker(bind=conn)`` with every
``join_transaction_mode``); a ``Connection`` that outlives a session; a ``TEMP`` table; a
``scoped_session`` registry; ``AUTOCOMMIT``; async sessions. Each is a method of
:class:`_Checker`, built on the questions of :class:`~sa_tenancy._conformance_checks._CheckerBase`,
and a new situation to prove is one more method here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from typing import get_args

from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm.session import JoinTransactionMode
from sqlalchemy.pool import StaticPool

from ._conformance_checks import _RAW
from ._conformance_checks import _CheckerBase
from ._conformance_checks import _error
from .exc import TenancyError

#: ``join_transaction_mode`` values of this SQLAlchemy, all tried on a shared Connection.
JOIN_MODES: tuple[str, ...] = get_args(JoinTransactionMode)


class _Checker(_CheckerBase):
    """The scenarios, run in order by :func:`~sa_tenancy.conformance.check_isolation`."""

    def run_sync(self, url: str) -> None:
        a, b = self.tenants
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            with engine.connect() as conn:
                default_path = str(conn.execute(text("SHOW search_path")).scalar())
            self.default_path = default_path
            self.seed(engine)
            first = self.models[0]

            scenario = "after commit"
            with self.scenario(scenario):
                with self.session(engine, a) as session:
                    self.read(session, scenario, a)
                    session.commit()
                self.plain_checkout(engine, scenario, default_path)
                with self.session(engine, b) as session:
                    self.read(session, scenario, b)

            scenario = "after rollback"
            with self.scenario(scenario):
                with self.session(engine, a) as session:
                    row = session.scalars(select(first.cls)).first()
                    if row is not None:
                        setattr(row, first.marker, f"{a}-rolled-back"[:63])
                        session.flush()
                    session.rollback()
                self.plain_checkout(engine, scenario, default_path)
                with self.session(engine, b) as session:
                    self.read(session, scenario, b)
                with self.session(engine, a) as session:
                    self.read(session, scenario, a)

            scenario = "after a database error"
            with self.scenario(scenario):
                with self.session(engine, a) as session:
                    session.add(self.make_row(first.cls, a))  # same primary key again
                    try:
                        session.flush()
                        self.report.notes.append("the duplicate row was accepted; no error raised")
                    except DBAPIError:
                        pass
                    session.rollback()
                self.plain_checkout(engine, scenario, default_path)
                with self.session(engine, b) as session:
                    self.read(session, scenario, b)

            self.run_two_sessions(url, engine)
            self.run_bound_connection(engine)
            self.run_temp_table(engine)
            if isinstance(self.factory, scoped_session):
                self.run_scoped_registry(engine)
        finally:
            engine.dispose()

        scenario = "AUTOCOMMIT engine"
        auto = create_engine(url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
        try:
            with self.scenario(scenario):
                for tenant in (a, b):
                    try:
                        with self.session(auto, tenant) as session:
                            self.read(session, scenario, tenant)
                    except TenancyError:
                        self.report.notes.append(f"{scenario}: refused with TenancyError (fine)")
                        break
        finally:
            auto.dispose()

    def two_sessions(self, scenario: str, make: Callable[[str], Session]) -> None:
        """Tenant A's session begins, then tenant B's on the same connection; A reads again."""
        a, b = self.tenants
        first = make(a)
        second: Session | None = None
        try:
            self.read(first, scenario, a)
            second = make(b)
            try:
                self.read(second, f"{scenario}, the second session", b)
            except TenancyError as exc:
                self.report.notes.append(
                    f"{scenario}: the second session was refused ({type(exc).__name__}; fine)"
                )
            try:
                self.read(first, f"{scenario}, the first session after the second began", a)
            except (TenancyError, SQLAlchemyError) as exc:
                # Failing closed is not a leak: the first session's connection was refused.
                self.report.notes.append(
                    f"{scenario}: the first session failed closed after the second began "
                    f"({_error(exc)})"
                )
        finally:
            for session in (second, first):
                if session is not None:
                    with suppress(SQLAlchemyError):
                        session.close()

    def run_two_sessions(self, url: str, engine: Engine) -> None:
        scenario = "two sessions, one connection (StaticPool engine)"
        static = create_engine(url, poolclass=StaticPool)
        try:
            with self.scenario(scenario, refusal_ok=True):
                self.two_sessions(scenario, lambda tenant: self.session(static, tenant))
        finally:
            static.dispose()
        for outer in (False, True):
            for mode in JOIN_MODES:
                scenario = (
                    f"two sessions, one Connection (bind=conn, "
                    f"{'outer conn.begin()' if outer else 'no outer transaction'}, "
                    f"join_transaction_mode={mode!r})"
                )
                with self.scenario(scenario, refusal_ok=True), engine.connect() as conn:
                    if outer:
                        conn.begin()

                    def make(tenant: str, conn: Connection = conn, mode: str = mode) -> Session:
                        return self.session(conn, tenant, join_transaction_mode=mode)

                    try:
                        self.two_sessions(scenario, make)
                    finally:
                        conn.rollback()

    def run_bound_connection(self, engine: Engine) -> None:
        a = self.tenants[0]
        variants: list[tuple[bool, str | None]] = [(False, None)]
        variants += [(True, mode) for mode in JOIN_MODES]
        for outer, mode in variants:
            where = f"outer conn.begin(), join_transaction_mode={mode!r}" if outer else "alone"
            scenario = f"a Connection after a session bound to it ended ({where})"
            with self.scenario(scenario, refusal_ok=True), engine.connect() as conn:
                outer_transaction = conn.begin() if outer else None
                kw = {"join_transaction_mode": mode} if mode else {}
                try:
                    with self.session(conn, a, **kw) as session:
                        self.read(session, scenario, a)
                        session.commit()
                    self.connection_carries_no_tenant(conn, scenario, a)
                    if outer_transaction is not None and outer_transaction.is_active:
                        outer_transaction.rollback()
                        self.connection_carries_no_tenant(
                            conn, f"{scenario}, after the outer transaction", a
                        )
                finally:
                    conn.rollback()

    def run_temp_table(self, engine: Engine) -> None:
        a, b = self.tenants
        scenario = "a TEMP table across tenants on one pooled connection"
        name = f"sa_tenancy_conformance_{uuid.uuid4().hex[:12]}"
        with self.scenario(scenario, refusal_ok=True):
            with self.session(engine, a) as session:
                conn = session.connection()
                try:
                    conn.execute(
                        text(
                            f"CREATE TEMP TABLE {name} (tenant text) ON COMMIT PRESERVE ROWS"
                        ).execution_options(**_RAW)
                    )
                except DBAPIError as exc:  # e.g. no TEMPORARY privilege: nothing to leak
                    self.report.notes.append(f"{scenario}: not checked ({_error(exc)})")
                    return
                conn.execute(
                    text(f"INSERT INTO pg_temp.{name} VALUES (:t)").execution_options(**_RAW),
                    {"t": a},
                )
                session.commit()
            try:
                with self.session(engine, b) as session:
                    try:
                        rows = session.connection().execute(
                            text(f"SELECT tenant FROM pg_temp.{name}").execution_options(**_RAW)
                        )
                        seen = list(rows.scalars())
                    except DBAPIError:
                        return  # gone: tenant B cannot see it
                    self.report.fail(
                        scenario,
                        f"tenant {b!r}'s transaction read pg_temp.{name}, a TEMP table made in "
                        f"tenant {a!r}'s transaction (rows {seen!r}); unqualified, it shadows "
                        "tables of the same name",
                    )
            finally:
                with engine.connect() as conn:  # never leave it for later scenarios
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{name}")
                    conn.commit()

    def run_scoped_registry(self, engine: Engine) -> None:
        scenario = "scoped_session registry"
        registry = self.factory
        if registry.registry.has():
            self.report.notes.append(
                f"{scenario}: not checked, the registry already holds a session in this "
                "thread (call .remove() first)"
            )
            return
        with self.scenario(scenario):
            for tenant in (*self.tenants, self.tenants[0]):
                try:
                    session = registry(bind=engine, info={self.info_key: tenant})
                    self.read(session, scenario, tenant)
                    session.commit()
                finally:
                    registry.remove()

    def run_async(self, url: str, async_factory: Any) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        scenario = "async sessions"

        async def main() -> None:
            engine = create_async_engine(url, pool_size=1, max_overflow=0)
            try:
                for tenant in (*self.tenants, *self.tenants):
                    info = {self.info_key: tenant}
                    async with async_factory(bind=engine, info=info) as session:
                        await session.run_sync(lambda s, t=tenant: self.read(s, scenario, t))
                        await session.commit()
                async with engine.connect() as conn:
                    path = (await conn.execute(text("SHOW search_path"))).scalar()
                if path != self.default_path:
                    self.report.fail(
                        scenario,
                        f"the pooled connection kept search_path {path!r} (server default "
                        f"{self.default_path!r})",
                    )
            finally:
                await engine.dispose()

        with self.scenario(scenario):
            asyncio.run(main())
