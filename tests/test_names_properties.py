"""Hostile input, by property: every tenant name is refused before any SQL, or round-trips.

For any value put in ``session.info["schema"]`` (text of any kind: unicode, control
characters, quotes, huge; bytes-like; other objects, some with a hostile ``__str__`` or
``__eq__``), exactly one of these holds, under the default policy and under a policy widened to
accept every name (``names=lambda n: True``), for both strategies:

* it is refused with :class:`~sa_tenancy.InvalidSchemaName` and **no statement reached the
  database** (counted with a ``before_cursor_execute`` listener);
* it is accepted, and a schema created under exactly that name (a quoted ``CREATE SCHEMA``)
  is used by a session, found again in ``pg_namespace`` under the same name, and holds the row
  written through it.

Profiles: ``SA_TENANCY_HYPOTHESIS_PROFILE=ci`` (default, modest) or ``=large``
(``≥ 10,000`` examples per property; a documented command, not run in CI)::

    SA_TENANCY_HYPOTHESIS_PROFILE=large .venv/bin/pytest tests/test_names_properties.py -s
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import InvalidSchemaName
from sa_tenancy import NamePolicy
from sa_tenancy import SchemaRequired

from .models import Note
from .models import tenant_metadata

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "large",
    max_examples=10_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(os.environ.get("SA_TENANCY_HYPOTHESIS_PROFILE", "ci"))
DB_EXAMPLES = PROFILE.max_examples if PROFILE.max_examples >= 10_000 else 60

WIDE = NamePolicy(lambda name: True)
DEFAULT = NamePolicy()

TRICKY = [
    "",
    " ",
    '"',
    '""',
    'a"b',
    "a'b",
    "a\\b",
    'x"; DROP SCHEMA public CASCADE; --',
    "a, public",
    "a.b",
    "$user",
    "%",
    "%%",
    "a%b",
    "%s",
    "%(schema)s",
    ":path",
    "pg_temp",
    "PG_TOAST",
    "Public",
    "public",
    "information_schema",
    "pg_catalog",
    "ÉCOLE",
    "é" * 31,
    "é" * 32,  # 64 bytes
    "x" * 63,
    "x" * 64,
    "😀" * 15,
    "😀" * 16,  # 64 bytes
    "\x00",
    "a\x00b",
    "a\nb",
    "\t",
    "\x7f",
    "\u0085",
    "\u200b",
    "\u2028",
    "\ufeff",
    "Ω",
    "ﬁ",
    "  lead",
    "trail  ",
    "A",
    "a",
    "_",
    "9lives",
    "tenant_1",
]


def _repeat(args: tuple[str, int]) -> str:
    return args[0] * args[1]


NAMES = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=70),
    st.text(alphabet=st.characters(codec="ascii"), max_size=70),
    st.text(alphabet="abcXYZ_09\"' .,;$-\\", max_size=70),
    st.from_regex(r"[a-z_][a-z0-9_]{0,70}", fullmatch=True),
    st.tuples(st.characters(), st.integers(60, 100_000)).map(_repeat),
)


class HostileStr:
    """Not a str, but pretends: its ``__str__`` names a tenant and it equals everything."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


class Exploding:
    """``__str__``, ``__eq__``, ``__len__`` and ``__format__`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ called")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ called")

    def __len__(self) -> int:
        raise RuntimeError("__len__ called")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("__format__ called")

    def __repr__(self) -> str:
        return "<Exploding>"

    __hash__ = object.__hash__


NON_STR = st.one_of(
    st.binary(max_size=70),
    st.binary(max_size=70).map(bytearray),
    st.binary(max_size=70).map(lambda b: memoryview(b)),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
    st.tuples(st.text(max_size=5)),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    st.text(max_size=20).map(HostileStr),
    st.just(Exploding()),
    st.just(object()),
)


class Counter:
    """Statements that reached the DBAPI cursor."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *args: object) -> None:
        self.count += 1


class Rig:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, pool_size=1, max_overflow=0)
        self.statements = Counter()
        event.listen(self.engine, "before_cursor_execute", self.statements)
        self.factories = {}
        for policy_name, policy in (("default", DEFAULT), ("wide", WIDE)):
            for strategy in ("search_path", "translate_map"):
                factory = sessionmaker(self.engine)
                sa_tenancy.install(factory, strategy=strategy, names=policy, require=True)
                self.factories[(policy_name, strategy)] = factory

    def refused_before_sql(self, value: object, policy_name: str) -> None:
        """``value`` is refused by every session and lifecycle call, with no SQL sent."""
        before = self.statements.count
        for strategy in ("search_path", "translate_map"):
            with self.factories[(policy_name, strategy)](info={"schema": value}) as session:
                with pytest.raises(InvalidSchemaName):
                    session.scalars(select(Note.body)).all()
        policy = WIDE if policy_name == "wide" else DEFAULT
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.create_tenant(self.engine, value, names=policy)  # type: ignore[arg-type]
        assert self.statements.count == before, f"SQL was sent for {value!r}"

    def round_trip(self, name: str, policy_name: str) -> None:
        """A schema named exactly ``name`` is created, used by sessions and found again."""
        with self.engine.begin() as conn:
            quoted = conn.dialect.identifier_preparer.quote_identifier(name)
            conn.exec_driver_sql(f"CREATE SCHEMA {quoted}")
            mapped = conn.execution_options(schema_translate_map={None: name})
            tenant_metadata.tables["notes"].create(mapped)
            conn.execution_options(schema_translate_map=None)
        try:
            write, read = ("search_path", "translate_map")
            with self.factories[(policy_name, write)](info={"schema": name}) as session:
                session.add(Note(id=1, body=name[:100]))
                session.commit()
            with self.factories[(policy_name, read)](info={"schema": name}) as session:
                assert session.scalars(select(Note.body)).all() == [name[:100]]
                note = session.get(Note, 1)
                assert note is not None
                note.body = "updated"
                session.commit()
            with self.factories[(policy_name, write)](info={"schema": name}) as session:
                assert session.scalars(select(Note.body)).all() == ["updated"]
            with self.engine.connect() as conn:
                found = conn.execute(
                    text("SELECT nspname FROM pg_namespace WHERE nspname = :n"), {"n": name}
                ).scalar()
                assert found == name
                assert conn.execute(text("SHOW search_path")).scalar() == '"$user", public'
        finally:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {quoted} CASCADE")


@pytest.fixture(scope="module")
def rig(pg_url: str) -> Iterator[Rig]:
    rig = Rig(pg_url)
    yield rig
    rig.engine.dispose()


def _classify(policy: NamePolicy, value: object) -> str | None:
    try:
        checked = policy.validate(value)
    except InvalidSchemaName:
        return None
    assert type(checked) is str
    assert checked == str.__str__(value)
    return checked


# -- pure: validation alone, many examples -----------------------------------------------------


@settings(PROFILE, max_examples=PROFILE.max_examples * 3)
@given(value=st.one_of(NAMES, NON_STR))
def test_validate_refuses_or_returns_the_same_plain_str(value):
    for policy in (DEFAULT, WIDE):
        checked = _classify(policy, value)
        if checked is None:
            continue
        assert isinstance(value, str)
        raw = value.encode("utf-8", "surrogatepass")
        assert 1 <= len(raw) <= 63
        assert "\x00" not in checked
        assert not checked.lower().startswith("pg_")
        if policy is DEFAULT:
            assert checked.isascii() and checked == checked.lower()


# -- against PostgreSQL: refused before SQL, or round-trips -----------------------------------


@settings(PROFILE, max_examples=DB_EXAMPLES)
@given(name=NAMES.filter(lambda n: n != "$user"))  # see test_dollar_user_*
def test_text_names_refused_before_sql_or_round_trip(rig, name):
    for policy_name, policy in (("default", DEFAULT), ("wide", WIDE)):
        if _classify(policy, name) is None:
            rig.refused_before_sql(name, policy_name)
        else:
            rig.round_trip(name, policy_name)


@settings(PROFILE, max_examples=DB_EXAMPLES)
@given(value=NON_STR)
def test_non_str_info_values_refused_before_sql(rig, value):
    rig.refused_before_sql(value, "wide")
    rig.refused_before_sql(value, "default")


def test_none_means_no_tenant_and_is_refused_when_required(rig):
    before = rig.statements.count
    with rig.factories[("wide", "search_path")](info={"schema": None}) as session:
        with pytest.raises(SchemaRequired):
            session.scalars(select(Note.body)).all()
    assert rig.statements.count == before


def test_str_subclass_with_hostile_dunders_uses_its_real_value(rig, pg_tenants):
    """A str subclass whose __str__ names another tenant and that equals everything."""
    real, other = pg_tenants(tenant_metadata, 2)

    class Sneaky(str):
        def __str__(self) -> str:
            return other

        def __eq__(self, value: object) -> bool:
            return True

        def __hash__(self) -> int:
            return 0

    for strategy in ("search_path", "translate_map"):
        with rig.factories[("default", strategy)](info={"schema": Sneaky(real)}) as session:
            session.add(Note(id=1 if strategy == "search_path" else 2, body=real))
            session.commit()
    with rig.factories[("default", "search_path")](info={"schema": other}) as session:
        assert session.scalars(select(Note.body)).all() == []
    with rig.factories[("default", "translate_map")](info={"schema": real}) as session:
        assert session.scalars(select(Note.body)).all() == [real, real]


def test_huge_name_is_refused_quickly(rig):
    name = "a" * 10_000_000
    started = time.perf_counter()
    rig.refused_before_sql(name, "wide")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("name", ["a\ud800", "\udfff", "t_\udc80x"])
def test_lone_surrogates_are_refused_before_sql(rig, name):
    rig.refused_before_sql(name, "wide")


def _make_schema(rig: Rig, name: str, body: str) -> None:
    with rig.engine.begin() as conn:
        quoted = conn.dialect.identifier_preparer.quote_identifier(name)
        conn.exec_driver_sql(f"CREATE SCHEMA {quoted}")
        mapped = conn.execution_options(schema_translate_map={None: name})
        tenant_metadata.tables["notes"].create(mapped)
        mapped.execute(tenant_metadata.tables["notes"].insert().values(id=1, body=body))
        conn.execution_options(schema_translate_map=None)


def _drop_schema(rig: Rig, name: str) -> None:
    with rig.engine.begin() as conn:
        quoted = conn.dialect.identifier_preparer.quote_identifier(name)
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")


def test_percent_in_a_widened_name_reads_its_own_schema(rig):
    """Found by the large profile: tenant '%' used to read schema '%%' (pyformat doubling)."""
    _make_schema(rig, "%", "percent")
    _make_schema(rig, "%%", "double-percent")
    try:
        with rig.factories[("wide", "search_path")](info={"schema": "%"}) as session:
            assert session.scalars(select(Note.body)).all() == ["percent"]
    finally:
        _drop_schema(rig, "%")
        _drop_schema(rig, "%%")


def test_dollar_user_is_refused_by_search_path_and_isolated_by_translate_map(rig):
    """Found by the large profile: on a search_path '"$user"' always means the role's schema."""
    with rig.engine.connect() as conn:
        role = str(conn.execute(text("SELECT current_user")).scalar())
    _make_schema(rig, "$user", "dollar-user")
    _make_schema(rig, role, "role-schema")
    try:
        before = rig.statements.count
        with rig.factories[("wide", "search_path")](info={"schema": "$user"}) as session:
            with pytest.raises(InvalidSchemaName, match="search_path"):
                session.scalars(select(Note.body)).all()
        assert rig.statements.count == before
        with rig.factories[("wide", "translate_map")](info={"schema": "$user"}) as session:
            assert session.scalars(select(Note.body)).all() == ["dollar-user"]
    finally:
        _drop_schema(rig, "$user")
        _drop_schema(rig, role)
