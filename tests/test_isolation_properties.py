"""Isolation by property: random interleavings of sessions that share one DBAPI connection.

Hypothesis drives two or three sessions (tenant ``a``, tenant ``b`` or no tenant) bound to one
``Connection`` (every ``join_transaction_mode``, with or without an outer transaction) or to a
``StaticPool`` engine, through random steps: ORM, Core (``session.connection()``), raw SQL,
fragments SQLAlchemy does not translate, ``get`` from the identity map, inserts, updates,
commits, rollbacks, closes, and random writes to ``session.info``. Errors are allowed (a refusal
is the point); what must never happen:

* a read that returns a row of another tenant, or of the default schema to a tenant session;
* a write that lands in another tenant's table or in ``public``.

Every row carries its owner in its text (``"<tenant>:..."``; ``public`` for the default schema),
so a stray row is visible wherever it ends up. Profiles as in ``test_names_properties.py``::

    SA_TENANCY_HYPOTHESIS_PROFILE=large .venv/bin/pytest tests/test_isolation_properties.py
"""

from __future__ import annotations

import contextlib
import itertools
import os

import psycopg
import pytest
from hypothesis import HealthCheck
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from sqlalchemy import column
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy import table
from sqlalchemy import text
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

import sa_tenancy
from sa_tenancy import TenancyError
from sa_tenancy.testing import DECOY

from .models import Note
from .models import tenant_metadata

LARGE = os.environ.get("SA_TENANCY_HYPOTHESIS_PROFILE") == "large"
EXAMPLES = 2_000 if LARGE else 40
RAW = {sa_tenancy.ALLOW_RAW_SQL: True}
JOIN_MODES = ["conditional_savepoint", "create_savepoint", "rollback_only", "control_fully"]
BINDINGS = ["connection", "connection+outer", "static_pool"]
ALLOWED = (TenancyError, DBAPIError, InvalidRequestError)  # refusals and database errors
lightweight = table("notes", column("id"), column("body"))

OPS = st.one_of(
    st.sampled_from(
        [
            *("orm", "core", "text", "fragment", "get"),
            *("insert", "update", "commit", "rollback", "close", "expunge"),
        ]
    ),
    st.tuples(st.just("info"), st.sampled_from(["a", "b", None])),
)
SCENARIO = st.fixed_dictionaries(
    {
        "binding": st.sampled_from(BINDINGS),
        "mode": st.sampled_from(JOIN_MODES),
        "sessions": st.lists(st.sampled_from(["a", "b", None]), min_size=2, max_size=3),
        "steps": st.lists(st.tuples(st.integers(0, 2), OPS), min_size=1, max_size=25),
    }
)
_ids = itertools.count(1000)


def owner(session):
    """The schema whose rows this session may see now: its tenant, or ``public`` without one."""
    return dict.get(session.info, "schema") or "public"


def check_read(values, session, names):
    expected = owner(session)
    for value in values:
        body = getattr(value, "body", value)
        if body is None:
            continue
        assert (
            body == DECOY or body.startswith("public:")
            if expected == "public"
            else body.startswith(f"{expected}:")
        ), f"a session of {expected!r} read {body!r}"


def run_step(session, op, names):
    """One step; a refusal or database error is fine, a foreign row is not."""
    tenant = owner(session)
    try:
        if op == "orm":
            check_read(session.scalars(select(Note)).all(), session, names)
        elif op == "core":
            connection = session.connection()
            check_read(connection.execute(select(Note.body)).scalars().all(), session, names)
        elif op == "text":
            rows = session.execute(text("SELECT body FROM notes").execution_options(**RAW))
            check_read(rows.scalars().all(), session, names)
        elif op == "fragment":
            check_read(session.execute(select(lightweight.c.body)).scalars().all(), session, names)
        elif op == "get":
            check_read([session.get(Note, 1)], session, names)
        elif op == "insert":
            session.add(Note(id=next(_ids), body=f"{tenant}:new"))
            session.flush()
        elif op == "update":
            session.execute(update(Note).where(Note.id == 1).values(body=f"{tenant}:upd"))
        elif op == "commit":
            session.commit()
        elif op == "rollback":
            session.rollback()
        elif op == "close":
            session.close()
        elif op == "expunge":
            session.expunge_all()
        else:
            session.info["schema"] = names[op[1]] if op[1] else None
    except ALLOWED:
        with contextlib.suppress(*ALLOWED):
            session.rollback()


def every_row(conn, names):
    """``{owner: [bodies]}`` read with qualified names, outside any tenant session."""
    found = {}
    for label, schema in (("a", names["a"]), ("b", names["b"]), ("public", "public")):
        sql = f'SELECT body FROM "{schema}".notes'
        found[label] = conn.exec_driver_sql(sql).scalars().all()
    return found


def settled_rows(conn, names):
    """Every row the shared Connection can see, after undoing what the sessions left broken.

    Sessions that ended each other's transactions may leave an invalid savepoint or transaction
    on the Connection, or a transaction the server has aborted; those are rolled back
    (innermost first) until it can read again.
    """
    for _ in range(20):
        try:
            return every_row(conn, names)
        except TenancyError:
            # A session that could not end (SQLAlchemy failed to close it) left the Connection
            # serving its tenant: sa_tenancy refuses every statement on it. Discard it and
            # check what was committed.
            conn.invalidate()
            with conn.engine.connect() as fresh:
                return every_row(fresh, names)
        except DBAPIError as error:
            if not isinstance(error.orig, psycopg.errors.InFailedSqlTransaction):
                raise
            # One session's rollback released a savepoint another session still counted on;
            # that one's close then failed on the server and aborted the shared transaction.
            # Nothing it wrote survives: read what was committed.
            conn.rollback()
        except InvalidRequestError:
            nested = conn.get_nested_transaction()
            if nested is not None and not nested.is_active:
                nested.rollback()
            else:
                conn.rollback()
    raise AssertionError("the Connection could not be read again")


def assert_rows_in_place(found, names):
    for label in ("a", "b"):
        stray = [b for b in found[label] if not b.startswith(f"{names[label]}:")]
        assert not stray, f"tenant {label}'s table holds {stray!r}"
    stray = [b for b in found["public"] if b != DECOY and not b.startswith("public:")]
    # (the public seed row is the decoy; a session without a tenant may add "public:" rows)
    assert not stray, f"public holds {stray!r}"


@pytest.fixture
def names(pg_engine, pg_tenants):
    a, b = pg_tenants(tenant_metadata, 2)
    with pg_engine.begin() as conn:
        for schema in (a, b):
            conn.exec_driver_sql(f"INSERT INTO \"{schema}\".notes VALUES (1, '{schema}:seed')")
    return {"a": a, "b": b, "public": "public"}


def reset(conn, names):
    for schema in (names["a"], names["b"]):
        conn.exec_driver_sql(f'DELETE FROM "{schema}".notes WHERE id <> 1')
        conn.exec_driver_sql(f"UPDATE \"{schema}\".notes SET body = '{schema}:seed'")
    conn.exec_driver_sql(f"DELETE FROM public.notes WHERE body <> '{DECOY}'")


# SQLAlchemy warns when one session ends a transaction another session shares (rollback_only,
# control_fully): that is the misuse these sessions are made to commit, not what is tested.
@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=SCENARIO)
@example(  # one session's rollback releases the other's savepoint; its close aborts the outer
    scenario={
        "binding": "connection+outer",
        "mode": "create_savepoint",
        "sessions": [None, None],
        "steps": [(1, "orm"), (0, "orm"), (1, ("info", "a")), (0, "orm")],
    }
)
def test_interleaved_sessions_on_one_connection(pg_url, names, strategy, scenario):
    binding = scenario["binding"]
    static = binding == "static_pool"
    engine = create_engine(pg_url, poolclass=StaticPool if static else None)
    conn = None if static else engine.connect()
    try:
        outer = conn.begin() if conn is not None and binding == "connection+outer" else None
        factory = (
            sessionmaker(engine)
            if conn is None
            else sessionmaker(bind=conn, join_transaction_mode=scenario["mode"])
        )
        sa_tenancy.install(factory, strategy=strategy, allow_raw_sql=True)
        sessions = [factory(info={"schema": names[t]} if t else {}) for t in scenario["sessions"]]
        for index, op in scenario["steps"]:
            run_step(sessions[index % len(sessions)], op, names)
        for session in reversed(sessions):
            with contextlib.suppress(*ALLOWED):
                session.close()
        if conn is None:
            with engine.connect() as check:
                assert_rows_in_place(every_row(check, names), names)
        else:
            assert_rows_in_place(settled_rows(conn, names), names)
            if outer is not None and outer.is_active:
                outer.rollback()
            elif conn.in_transaction():
                conn.commit()
            conn.close()
        with engine.begin() as cleanup:
            reset(cleanup, names)
    finally:
        if conn is not None:
            conn.close()
        engine.dispose()
