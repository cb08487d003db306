"""The isolation conformance check's instruments: tenant sessions, seeding, reading, findings.

Each scenario of :mod:`sa_tenancy._conformance_scenarios` sets up one way of sharing a
connection between tenants, then asks the same questions: does a session for tenant B read only
B's rows, does a plain checkout or a ``Connection`` used after a session carry no tenant? Those
questions, and how an unexpected error becomes a finding instead of ending the run, live here,
so the scenarios read as the list of situations they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import inspect
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session

from ._conformance_report import ConformanceReport
from ._conformance_rows import RowMaker
from ._conformance_rows import _mark
from ._conformance_rows import _Model
from .exc import TenancyError
from .strategies import ALLOW_RAW_SQL

# Raw SQL the kit itself runs inside tenant transactions: a translate_map installation refuses
# untranslatable SQL unless the statement says it qualifies its names (these do, or need none).
_RAW = {ALLOW_RAW_SQL: True}


def _maker(factory: Any) -> Any:
    """What makes one session: a ``scoped_session``'s own ``session_factory``."""
    return factory.session_factory if isinstance(factory, scoped_session) else factory


def _error(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    shown = orig if orig is not None else exc
    return f"{type(shown).__name__}: {str(shown).splitlines()[0][:200] if str(shown) else ''}"


class _CheckerBase:
    """Sessions for a tenant, the seed rows, and the checks each scenario makes afterwards."""

    def __init__(
        self,
        factory: Any,
        models: list[_Model],
        tenants: tuple[str, str],
        info_key: str,
        make_row: RowMaker,
        report: ConformanceReport,
    ) -> None:
        self.factory = factory
        self.maker = _maker(factory)
        self.models = models
        self.tenants = tenants
        self.info_key = info_key
        self.make_row = make_row
        self.report = report
        self.default_path = '"$user", public'

    def session(self, bind: Engine | Connection, tenant: str | None, **kw: Any) -> Session:
        info = {self.info_key: tenant} if tenant is not None else {}
        return self.maker(bind=bind, info=info, **kw)  # type: ignore[no-any-return]

    @contextmanager
    def scenario(self, name: str, *, refusal_ok: bool = False) -> Iterator[None]:
        """Run one scenario; an unexpected error is a finding, and the next scenario still runs.

        With ``refusal_ok``, a :class:`~sa_tenancy.TenancyError` ends the scenario as a note:
        refusing a setup it cannot keep isolated is what a correct library may do.
        """
        self.report.scenarios.append(name)
        try:
            yield
        except TenancyError as exc:
            if not refusal_ok:
                self.report.fail(name, f"could not be checked: it raised {_error(exc)}")
            else:
                self.report.notes.append(f"{name}: refused ({_error(exc)}; fine)")
        except Exception as exc:
            self.report.fail(name, f"could not be checked: it raised {_error(exc)}")

    def seed(self, engine: Engine) -> None:
        for tenant in self.tenants:
            with self.session(engine, tenant) as session:
                try:
                    for model in self.models:
                        session.add(self.make_row(model.cls, tenant))
                        session.flush()
                    session.commit()
                except DBAPIError as exc:
                    # The tenants are empty: a duplicate key means the write went elsewhere.
                    self.report.fail(
                        "writing the rows",
                        f"tenant {tenant!r} could not write row 1 of {model.table!r} to its "
                        f"empty schema ({type(exc.orig).__name__}): the write went to another "
                        "schema",
                    )
                    session.rollback()

    def _rows(self, reader: Session | Connection, model: _Model) -> list[Any]:
        return list(reader.scalars(select(getattr(model.cls, model.marker))))

    def read(self, session: Session, scenario: str, tenant: str) -> None:
        for model in self.models:
            seen = self._rows(session, model)
            mine = {tenant, _mark(inspect(model.cls).columns[model.marker], tenant)}
            foreign = sorted({str(v) for v in seen if v not in mine})
            if foreign:
                self.report.fail(
                    scenario,
                    f"a session for tenant {tenant!r} read {len(seen)} row(s) from "
                    f"{model.table!r}, marked {foreign} instead of {tenant!r}",
                )
            elif len(seen) != 1:
                self.report.fail(
                    scenario,
                    f"a session for tenant {tenant!r} read {len(seen)} row(s) from "
                    f"{model.table!r}; expected its 1 row",
                )

    def plain_checkout(self, engine: Engine, scenario: str, default_path: str) -> None:
        with engine.connect() as conn:
            path = conn.execute(text("SHOW search_path")).scalar()
        if path != default_path:
            self.report.fail(
                scenario,
                f"the pooled connection kept search_path {path!r} (server default "
                f"{default_path!r}): the next user of the pool inherits a tenant",
            )

    def connection_carries_no_tenant(self, conn: Connection, scenario: str, tenant: str) -> None:
        """``conn``, used directly after a tenant session on it ended, must serve no tenant."""
        translate = conn.get_execution_options().get("schema_translate_map") or {}
        if tenant in translate.values():
            self.report.fail(
                scenario,
                f"the Connection still has schema_translate_map {dict(translate)!r} after the "
                f"session ended: statements on it run against tenant {tenant!r}",
            )
        path = conn.execute(text("SHOW search_path").execution_options(**_RAW)).scalar()
        if path != self.default_path:
            self.report.fail(
                scenario,
                f"the Connection kept search_path {path!r} after the session ended (server "
                f"default {self.default_path!r})",
            )
        for model in self.models:
            try:
                with conn.begin_nested():
                    seen = self._rows(conn, model)
            except DBAPIError:
                continue  # no such table in the default schema: nothing read, nothing leaked
            leaked = sorted({str(v) for v in seen if v in self.tenants})
            if leaked:
                self.report.fail(
                    scenario,
                    f"a plain select on the Connection read {model.table!r} rows marked "
                    f"{leaked}: it still reads the tenant's table, not the default schema's",
                )
