"""A PostgreSQL role per tenant (``tenant_roles=True``): the server itself refuses other tenants.

The application connects as a non-superuser login role made for the test; lifecycle runs as the
owner (the test server's superuser). Every role made here has a unique name and is dropped.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from sqlalchemy import Column
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import Table
from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import TenantRoles
from sa_tenancy import tenant_role
from sa_tenancy.testing import unique_name

from . import _alembic_env
from .models import Note
from .models import tenant_metadata

RAW = {sa_tenancy.ALLOW_RAW_SQL: True}
fleet_url = _alembic_env.fleet_url
fleet_engine = _alembic_env.fleet_engine
CURRENT_USER = text("SELECT current_user").execution_options(**RAW)


# -- the role name -------------------------------------------------------------------------------


def test_role_name_rule():
    assert tenant_role("acme") == "sa_t_acme"
    assert tenant_role("acme", prefix="billing_") == "billing_t_acme"
    long = "a" * 63
    hashed = tenant_role(long)
    assert hashed.startswith("sa_h_") and len(hashed.encode()) <= 63
    assert tenant_role(long) == hashed
    with pytest.raises(sa_tenancy.InvalidSchemaName):
        tenant_role("acme", prefix="pg_")
    with pytest.raises(sa_tenancy.InvalidSchemaName):
        tenant_role("acme", prefix="a_b_")  # one underscore only: the prefix must be readable back
    with pytest.raises(sa_tenancy.InvalidSchemaName):
        tenant_role("x" * 64)
    with pytest.raises(sa_tenancy.InvalidSchemaName):
        tenant_role("pg_catalog")


_names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"),
    min_size=1,
    max_size=63,
).filter(
    lambda n: (
        len(n.encode()) <= 63
        and not n.lower().startswith("pg_")
        and n.lower() not in ("public", "information_schema", "pg_catalog", "pg_toast")
    )
)
_near_limit = st.builds(
    lambda stem, tail: (stem + tail)[:63], st.sampled_from(["a" * 55, "é" * 28]), _names
).filter(lambda n: len(n.encode()) <= 63)
_prefixes = st.sampled_from(["sa_", "s_", "billing_", "a1_"])


@settings(max_examples=400, deadline=None)
@given(a=st.one_of(_names, _near_limit), b=st.one_of(_names, _near_limit), p=_prefixes, q=_prefixes)
def test_role_names_are_injective_bounded_and_deterministic(a, b, p, q):
    ra, rb = tenant_role(a, prefix=p), tenant_role(b, prefix=q)
    assert len(ra.encode()) <= 63 and len(rb.encode()) <= 63
    assert ra == tenant_role(a, prefix=p)
    assert (ra == rb) == (a == b and p == q)
    assert not ra.startswith("pg_")


# -- fixtures ------------------------------------------------------------------------------------


def _drop_role(conn, role: str) -> None:
    if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
        conn.exec_driver_sql(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


@pytest.fixture
def login(pg_engine: Engine) -> Iterator[str]:
    """A non-superuser LOGIN role (trust auth on 127.0.0.1), dropped afterwards."""
    name = unique_name("app")
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEROLE NOINHERIT')
    yield name
    with pg_engine.begin() as conn:
        _drop_role(conn, name)


@pytest.fixture
def app_url(pg_url: str, login: str) -> str:
    return make_url(pg_url).set(username=login, password=None).render_as_string(False)


class Fleet:
    """Tenants with roles, made as the owner; everything dropped at the end (roles too)."""

    def __init__(self, engine: Engine, login: str) -> None:
        self.engine = engine
        self.roles = TenantRoles(grant_to=login)
        self.made: list[str] = []
        self.role_names: set[str] = set()

    def __call__(self, count: int = 1, *, roles: bool = True) -> list[str]:
        names = [unique_name("rt") for _ in range(count)]
        for name in names:
            self.track(name)
            sa_tenancy.create_tenant(
                self.engine,
                name,
                metadata=tenant_metadata,
                tenant_roles=self.roles if roles else False,
            )
            with self.engine.begin() as conn:
                conn.exec_driver_sql(
                    f"INSERT INTO \"{name}\".notes (id, body) VALUES (1, '{name}')"
                )
        return names

    def track(self, name: str) -> None:
        self.made.append(name)
        self.role_names.add(tenant_role(name))

    def drop(self) -> None:
        with self.engine.begin() as conn:
            for name in self.made:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            for role in self.role_names:
                _drop_role(conn, role)


@pytest.fixture
def fleet(pg_engine: Engine, login: str) -> Iterator[Fleet]:
    made = Fleet(pg_engine, login)
    yield made
    made.drop()


@pytest.fixture
def app_engine(app_url: str) -> Iterator[Engine]:
    engine = create_engine(app_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _exists(engine: Engine, role: str) -> bool:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
        return found.first() is not None


@pytest.fixture
def factory(app_engine: Engine, strategy: str) -> Iterator[sessionmaker]:
    made = sessionmaker(app_engine)
    installation = sa_tenancy.install(made, strategy=strategy, tenant_roles=True)
    yield made
    installation.uninstall()


def _sqlstate(error: sa_exc.DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)


# -- sessions ------------------------------------------------------------------------------------


def test_tenant_reads_and_writes_its_own_tables(fleet, factory):
    (a,) = fleet(1)
    with factory(info={"schema": a}) as session:
        assert session.execute(CURRENT_USER).scalar() == tenant_role(a)
        session.add(Note(id=2, body="orm"))
        session.flush()
        assert sorted(session.scalars(select(Note.body))) == sorted([a, "orm"])
        session.execute(
            text(f"INSERT INTO \"{a}\".notes (id, body) VALUES (3, 'raw')").execution_options(**RAW)
        )
        rows = session.execute(text(f'SELECT count(*) FROM "{a}".notes').execution_options(**RAW))
        assert rows.scalar() == 3
        session.commit()


def test_raw_sql_naming_another_schema_is_refused_by_the_server(fleet, factory, pg_engine, login):
    a, b = fleet(2)
    targets = (f'"{b}".notes', "public.rt_decoy", "sa_tenancy.tenant_versions")
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS public.rt_decoy (x int)")
        # The login role itself may read all of them, as a typical application role can.
        conn.exec_driver_sql(
            f'GRANT USAGE ON SCHEMA "{b}", sa_tenancy TO "{login}"; '
            f'GRANT SELECT ON {", ".join(targets)} TO "{login}"'
        )
    try:
        for target in targets:
            query = text(f"SELECT count(*) FROM {target}").execution_options(**RAW)
            with factory() as session:  # no tenant: the login role reads it (the control)
                session.execute(query)
            with factory(info={"schema": a}) as session:
                with pytest.raises(sa_exc.ProgrammingError) as caught:
                    session.execute(query)
                assert _sqlstate(caught.value) == "42501", target  # insufficient_privilege
    finally:
        with pg_engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS public.rt_decoy")


def test_login_role_is_back_after_commit_rollback_error_and_invalidation(fleet, factory, login):
    (a,) = fleet(1)
    engine = factory.kw["bind"]

    def after() -> str:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT current_user")).scalar())

    with factory(info={"schema": a}) as session:
        assert session.execute(CURRENT_USER).scalar() == tenant_role(a)
        session.commit()
    assert after() == login
    with factory(info={"schema": a}) as session:
        session.execute(CURRENT_USER)
        session.rollback()
    assert after() == login
    with factory(info={"schema": a}) as session:
        with pytest.raises(sa_exc.DBAPIError):
            session.execute(text("SELECT 1/0").execution_options(**RAW))
    assert after() == login
    with factory(info={"schema": a}) as session:
        session.execute(CURRENT_USER)
        session.connection().invalidate()
    assert after() == login
    # and the next tenant transaction takes the role again on the same pool
    with factory(info={"schema": a}) as session:
        assert session.execute(CURRENT_USER).scalar() == tenant_role(a)


def test_role_travels_in_the_begin_message_on_psycopg(fleet, app_engine, statements_of):
    (a,) = fleet(1)
    made = sessionmaker(app_engine)
    sa_tenancy.install(made, tenant_roles=True)
    log = statements_of(app_engine)
    for _ in range(3):
        with made(info={"schema": a}) as session:
            session.scalars(select(Note)).all()
    # the login is checked once per pooled connection, in its first transaction
    assert log.count("rolsuper") == 1
    assert log.count("set_config('role'") == 1  # that first transaction's ordinary statement
    assert log.count("SET LOCAL ROLE") == 2  # then in the BEGIN message: no round trip more


def test_missing_role_fails_closed(fleet, factory, login):
    (a,) = fleet(1, roles=False)
    with pytest.raises(sa_tenancy.TenantRoleMissing, match="does not exist"):
        with factory(info={"schema": a}) as session:
            session.execute(CURRENT_USER)
    with factory.kw["bind"].connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == login


def test_role_not_granted_to_the_login_fails_closed(fleet, factory, pg_engine):
    (a,) = fleet(1)
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f'REVOKE "{tenant_role(a)}" FROM "{fleet.roles.grant_to}"')
    for _ in range(2):  # the fast path (BEGIN message) and the slow one alike
        with pytest.raises(sa_tenancy.TenantRoleMissing, match="not granted"):
            with factory(info={"schema": a}) as session:
                session.scalars(select(Note)).all()


def test_superuser_login_is_refused(fleet, pg_engine):
    (a,) = fleet(1)
    made = sessionmaker(pg_engine)
    sa_tenancy.install(made, tenant_roles=True)
    with pytest.raises(sa_tenancy.TenancyError, match="superuser"):
        with made(info={"schema": a}) as session:
            session.scalars(select(Note)).all()


def test_login_that_inherits_tenant_privileges_is_refused(fleet, pg_engine, pg_url):
    """INHERIT would give the login every tenant's tables outside tenant transactions."""
    (a,) = fleet(1)
    inheriting = unique_name("inh")
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{inheriting}" LOGIN NOSUPERUSER INHERIT')
        conn.exec_driver_sql(f'GRANT "{tenant_role(a)}" TO "{inheriting}"')
    engine = create_engine(make_url(pg_url).set(username=inheriting).render_as_string(False))
    try:
        with engine.connect() as conn:  # what it would expose: a tenant's rows, with no tenant
            assert conn.exec_driver_sql(f'SELECT body FROM "{a}".notes').scalars().all() == [a]
        made = sessionmaker(engine)
        sa_tenancy.install(made, tenant_roles=True)
        with pytest.raises(sa_tenancy.TenancyError, match="NOINHERIT"):
            with made(info={"schema": a}) as session:
                session.scalars(select(Note)).all()
    finally:
        engine.dispose()
        with pg_engine.begin() as conn:
            _drop_role(conn, inheriting)


def test_the_login_itself_reads_no_tenant(fleet, app_engine):
    """A NOINHERIT login outside a tenant transaction: the server refuses every tenant's table."""
    (a,) = fleet(1)
    with app_engine.connect() as conn:
        with pytest.raises(ProgrammingError, match="permission denied"):
            conn.exec_driver_sql(f'SELECT body FROM "{a}".notes').all()


def test_sessions_without_tenant_stay_the_login(factory, login):
    with factory() as session:
        assert session.execute(text("SELECT current_user")).scalar() == login


def test_outer_transaction_gets_its_role_back(fleet, app_engine, login):
    (a,) = fleet(1)
    with app_engine.connect() as conn:
        trans = conn.begin()
        made = sessionmaker(bind=conn, join_transaction_mode="create_savepoint")
        sa_tenancy.install(made, tenant_roles=True)
        for end in ("commit", "close"):  # commit releases the savepoint: SET LOCAL outlives it
            with made(info={"schema": a}) as session:
                assert session.execute(CURRENT_USER).scalar() == tenant_role(a)
                if end == "commit":
                    session.commit()
            assert conn.execute(text("SELECT current_user")).scalar() == login, end
        trans.rollback()


def test_tables_added_later_by_the_owner_are_usable(fleet, factory, pg_engine):
    """What a fleet migration does: the owner adds a table; default privileges grant it."""
    (a,) = fleet(1)
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE TABLE "{a}".extra (id serial PRIMARY KEY, v int)')
    with factory(info={"schema": a}) as session:
        session.execute(text(f'INSERT INTO "{a}".extra (v) VALUES (7)').execution_options(**RAW))
        query = text(f'SELECT v FROM "{a}".extra').execution_options(**RAW)
        assert session.execute(query).scalar() == 7


R3 = """
import sqlalchemy as sa
from alembic import op

revision = "r3"
down_revision = "r1"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("later", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("later")
"""


def test_fleet_migration_adds_a_table_the_role_can_use(fleet_url, fleet_engine, login, tmp_path):
    """Migrations run as the owner; default privileges leave the new table usable."""
    ini = _alembic_env.write_env(tmp_path, revisions=("r1",))
    roles = TenantRoles(grant_to=login)
    name = unique_name("rt")
    sa_tenancy.create_tenant(fleet_engine, name, alembic_config=ini, tenant_roles=roles)
    try:
        (tmp_path / "versions" / "r3.py").write_text(R3)
        report = sa_tenancy.migrate_tenants(fleet_url, ini, jobs=1, tenants=[name])
        assert report.ok and report.count("migrated") == 1, report
        app = create_engine(make_url(fleet_url).set(username=login).render_as_string(False))
        made = sessionmaker(app)
        sa_tenancy.install(made, tenant_roles=True)
        try:
            with made(info={"schema": name}) as session:
                session.execute(text("INSERT INTO later (id) VALUES (1)").execution_options(**RAW))
                query = text("SELECT count(*) FROM later, items").execution_options(**RAW)
                assert session.execute(query).scalar() == 0
                session.commit()
        finally:
            app.dispose()
    finally:
        sa_tenancy.drop_tenant(fleet_engine, name, tenant_roles=roles)
    assert not _exists(fleet_engine, tenant_role(name))


# -- lifecycle -----------------------------------------------------------------------------------


def test_rename_and_drop_keep_the_role_in_step(fleet, factory, pg_engine):
    (a,) = fleet(1)
    b = unique_name("rt")
    fleet.track(b)
    sa_tenancy.rename_tenant(pg_engine, a, b, tenant_roles=fleet.roles)
    assert not _exists(pg_engine, tenant_role(a))
    assert _exists(pg_engine, tenant_role(b))
    with factory(info={"schema": b}) as session:
        assert session.execute(CURRENT_USER).scalar() == tenant_role(b)
        assert session.scalars(select(Note.body)).all() == [a]
    sa_tenancy.drop_tenant(pg_engine, b, tenant_roles=fleet.roles)
    assert not _exists(pg_engine, tenant_role(b))


def test_clone_and_reservoir_claim_get_roles(fleet, factory, pg_engine):
    (template,) = fleet(1)
    clone, claimed = unique_name("rt"), unique_name("rt")
    fleet.track(clone)
    fleet.track(claimed)
    sa_tenancy.clone_tenant(pg_engine, template, clone, data=True, tenant_roles=fleet.roles)
    spares = sa_tenancy.fill_reservoir(pg_engine, 1, template=template, tenant_roles=fleet.roles)
    for spare in spares:
        fleet.role_names.add(tenant_role(spare))
    assert _exists(pg_engine, tenant_role(spares[0]))
    sa_tenancy.claim_tenant(pg_engine, claimed, tenant_roles=fleet.roles)
    assert not _exists(pg_engine, tenant_role(spares[0]))
    for name in (clone, claimed):
        with factory(info={"schema": name}) as session:
            assert session.execute(CURRENT_USER).scalar() == tenant_role(name)
            session.add(Note(id=50, body="x"))
            session.commit()


def test_a_role_made_for_another_database_is_not_taken_over(fleet, pg_engine):
    name = unique_name("rt")
    fleet.track(name)
    role = tenant_role(name)
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE \"{role}\" NOLOGIN; COMMENT ON ROLE \"{role}\" IS "
                             "'sa_tenancy:role:some_other_database'")  # fmt: skip
    with pytest.raises(sa_tenancy.TenancyError, match="another role prefix"):
        sa_tenancy.create_tenant(pg_engine, name, metadata=tenant_metadata, tenant_roles=True)
    assert not sa_tenancy.tenant_exists(pg_engine, name)  # one transaction: nothing left


def test_prefix_keeps_databases_apart(fleet, app_engine, pg_engine):
    name = unique_name("rt")
    fleet.track(name)
    roles = TenantRoles(prefix="other_", grant_to=fleet.roles.grant_to)
    fleet.role_names.add(tenant_role(name, prefix="other_"))
    sa_tenancy.create_tenant(pg_engine, name, metadata=tenant_metadata, tenant_roles=roles)
    made = sessionmaker(app_engine)
    sa_tenancy.install(made, strategy="translate_map", tenant_roles=roles)
    with made(info={"schema": name}) as session:
        assert session.execute(CURRENT_USER).scalar() == f"other_t_{name}"


def test_shared_schemas_are_readable(fleet, factory, pg_engine):
    shared = unique_name("shared")
    name = unique_name("rt")
    fleet.track(name)
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{shared}"; CREATE TABLE "{shared}".plans (id int)')
        conn.exec_driver_sql(f'INSERT INTO "{shared}".plans VALUES (1)')
    try:
        roles = TenantRoles(grant_to=fleet.roles.grant_to, shared_schemas=(shared,))
        sa_tenancy.create_tenant(pg_engine, name, metadata=tenant_metadata, tenant_roles=roles)
        with factory(info={"schema": name}) as session:
            query = text(f'SELECT id FROM "{shared}".plans').execution_options(**RAW)
            assert session.execute(query).scalar() == 1
            with pytest.raises(sa_exc.ProgrammingError) as caught:
                session.execute(
                    text(f'INSERT INTO "{shared}".plans VALUES (2)').execution_options(**RAW)
                )
            assert _sqlstate(caught.value) == "42501"
    finally:
        with pg_engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{shared}" CASCADE')
            _drop_role(conn, roles.shared_role)  # the group role every tenant reads through


def test_shared_tables_made_later_are_readable_through_the_group_role(pg_engine, app_engine, login):
    """create_shared_tables(tenant_roles=...): one group role; tables added later need no sync."""
    prefix = "g" + uuid.uuid4().hex[:12] + "_"  # roles are cluster-wide: a prefix of its own
    where = unique_name("shared")
    roles = TenantRoles(prefix=prefix, grant_to=login, shared_schemas=(where,))
    shared = MetaData()
    Table("plans", shared, Column("id", Integer, primary_key=True), schema=where)
    name = unique_name("rt")
    try:
        sa_tenancy.create_shared_tables(pg_engine, shared, where, tenant_roles=roles)
        sa_tenancy.create_tenant(pg_engine, name, metadata=tenant_metadata, tenant_roles=roles)
        with pg_engine.begin() as conn:  # the owner adds a shared table after the tenant exists
            conn.exec_driver_sql(f'INSERT INTO "{where}".plans VALUES (7)')
            conn.exec_driver_sql(f'CREATE TABLE "{where}".extra (v int)')
            conn.exec_driver_sql(f'INSERT INTO "{where}".extra VALUES (8)')
        made = sessionmaker(app_engine)
        installation = sa_tenancy.install(made, tenant_roles=roles)
        try:
            with made(info={"schema": name}) as session:
                assert session.execute(CURRENT_USER).scalar() == roles.role(name)
                for table, value in (("plans", 7), ("extra", 8)):
                    read = text(f'SELECT * FROM "{where}".{table}').execution_options(**RAW)
                    assert session.execute(read).scalar() == value
        finally:
            installation.uninstall()
        with app_engine.connect() as conn:  # the login itself still reads nothing shared
            with pytest.raises(ProgrammingError, match="permission denied"):
                conn.exec_driver_sql(f'SELECT * FROM "{where}".plans').all()
    finally:
        with pg_engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{where}" CASCADE')
            for role in (roles.role(name), roles.shared_role):
                _drop_role(conn, role)


def test_sync_gives_existing_tenants_their_roles(fleet, factory, pg_engine):
    a, b = fleet(2, roles=False)
    seen: list[tuple[str, int, int]] = []
    roles = sa_tenancy.sync_tenant_roles(
        pg_engine,
        tenant_roles=fleet.roles,
        tenants=[a, b],
        progress=lambda t, d, n: seen.append((t, d, n)),
    )
    assert roles == {a: tenant_role(a), b: tenant_role(b)}
    assert [d for _, d, _ in seen] == [1, 2]
    for name in (a, b):
        with factory(info={"schema": name}) as session:
            assert session.scalars(select(Note.body)).all() == [name]
    # idempotent: a second run repairs nothing and fails nothing
    again = sa_tenancy.sync_tenant_roles(pg_engine, tenant_roles=fleet.roles, tenants=[a])
    assert again == {a: tenant_role(a)}


def test_cli_roles_sync_and_create(fleet, factory, pg_url, capsys):
    from sa_tenancy.cli import main

    (a,) = fleet(1, roles=False)
    new = unique_name("rt")
    fleet.track(new)
    grant = ["--grant-to", str(fleet.roles.grant_to)]
    assert main(["roles", "sync", "--url", pg_url, *grant, "--tenant", a]) == 0
    assert tenant_role(a) in capsys.readouterr().out
    assert main(["create", "--url", pg_url, "--tenant-roles", *grant, new]) == 0
    with factory(info={"schema": new}) as session:
        assert session.execute(CURRENT_USER).scalar() == tenant_role(new)
    assert main(["roles", "sync", "--url", pg_url, "--tenant", "no_such_tenant_x"]) == 1
    assert main(["roles", "sync", "--url", pg_url, "--role-prefix", "Bad"]) == 2
    renamed = unique_name("rt")
    fleet.track(renamed)
    assert main(["rename", "--url", pg_url, "--tenant-roles", *grant, new, renamed]) == 0
    assert _exists(fleet.engine, tenant_role(renamed)) and not _exists(
        fleet.engine, tenant_role(new)
    )
    assert main(["drop", "--url", pg_url, "--yes", "--tenant-roles", renamed]) == 0
    assert not _exists(fleet.engine, tenant_role(renamed))


# -- PgBouncer and async -------------------------------------------------------------------------


def test_pgbouncer_transaction_mode_never_keeps_a_role(fleet, pg_url, login, app_url, strategy):
    from sa_tenancy._pgbouncer import PgBouncer
    from sa_tenancy._pgbouncer import engine_options
    from sa_tenancy._pgbouncer import find_pgbouncer

    if find_pgbouncer() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("pgbouncer is not installed; CI=true: this test must not be skipped")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    a, b = fleet(2)
    with PgBouncer(pg_url, pool_size=1, users=(login,)) as bouncer:
        engines = [
            create_engine(bouncer.url(app_url), pool_size=1, max_overflow=0,
                          **engine_options("psycopg"))
            for _ in range(2)
        ]  # fmt: skip
        try:
            factories = [sessionmaker(e) for e in engines]
            for made in factories:
                sa_tenancy.install(made, strategy=strategy, tenant_roles=True)
            pids = set()
            for i in range(20):
                made, schema = factories[i % 2], (a, b)[(i // 3) % 2]
                with made(info={"schema": schema}) as session:
                    user, pid = session.execute(
                        text("SELECT current_user, pg_backend_pid()").execution_options(**RAW)
                    ).one()
                    assert user == tenant_role(schema)
                    assert session.scalars(select(Note.body)).all() == [schema]
                    pids.add(pid)
                    session.commit()
                with engines[(i + 1) % 2].connect() as plain:  # the other client, next on it
                    assert plain.execute(text("SELECT current_user")).scalar() == login
            assert len(pids) == 1  # one server connection served both clients and both tenants
        finally:
            for engine in engines:
                engine.dispose()


def test_async_psycopg(fleet, app_url, login):
    pytest.importorskip("greenlet")
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.ext.asyncio import create_async_engine

    a, b = fleet(2)

    async def main() -> None:
        engine = create_async_engine(app_url, pool_size=1, max_overflow=0)
        made = async_sessionmaker(engine)
        sa_tenancy.install(made, tenant_roles=True)
        try:
            for schema in (a, b, a):
                async with made(info={"schema": schema}) as session:
                    assert (await session.execute(CURRENT_USER)).scalar() == tenant_role(schema)
                    assert (await session.scalars(select(Note.body))).all() == [schema]
                    with pytest.raises(sa_exc.ProgrammingError):
                        other = b if schema == a else a
                        await session.execute(
                            text(f'SELECT * FROM "{other}".notes').execution_options(**RAW)
                        )
                async with engine.connect() as conn:
                    assert (await conn.execute(text("SELECT current_user"))).scalar() == login
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_translate_map_without_postgresql_refuses(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    made = sessionmaker(engine)
    sa_tenancy.install(made, strategy="translate_map", tenant_roles=True)
    with pytest.raises(sa_tenancy.TenancyError, match="PostgreSQL"):
        with made(info={"schema": "acme"}) as session:
            session.execute(select(1))


def test_custom_strategy_object_with_tenant_roles_is_refused():
    with pytest.raises(sa_tenancy.TenancyError, match="constructor"):
        sa_tenancy.install(sessionmaker(), strategy=sa_tenancy.SearchPath(), tenant_roles=True)


@pytest.fixture
def statements_of() -> Iterator[Callable[[Engine], object]]:
    from sqlalchemy import event

    from .conftest import StatementLog

    hooked: list[tuple[Engine, StatementLog]] = []

    def hook(engine: Engine) -> StatementLog:
        log = StatementLog()
        event.listen(engine, "before_cursor_execute", log)
        hooked.append((engine, log))
        return log

    yield hook
    for engine, log in hooked:
        event.remove(engine, "before_cursor_execute", log)


def test_lifecycle_as_a_createrole_owner_without_superuser(fleet_url, fleet_engine, login):
    """The managed-service shape: lifecycle as an owner with CREATEROLE, the app as a login."""
    owner = unique_name("own")
    database = make_url(fleet_url).database
    with fleet_engine.begin() as conn:
        conn.exec_driver_sql(
            f'CREATE ROLE "{owner}" LOGIN NOSUPERUSER CREATEROLE; '
            f'GRANT CREATE ON DATABASE "{database}" TO "{owner}"'
        )
    owner_engine = create_engine(make_url(fleet_url).set(username=owner).render_as_string(False))
    app = create_engine(make_url(fleet_url).set(username=login).render_as_string(False))
    roles = TenantRoles(grant_to=login)
    a, b = unique_name("rt"), unique_name("rt")
    try:
        sa_tenancy.create_tenant(owner_engine, a, metadata=tenant_metadata, tenant_roles=roles)
        made = sessionmaker(app)
        sa_tenancy.install(made, tenant_roles=True)
        with made(info={"schema": a}) as session:
            session.add(Note(id=1, body="x"))
            session.commit()
        sa_tenancy.rename_tenant(owner_engine, a, b, tenant_roles=roles)
        with made(info={"schema": b}) as session:
            assert session.execute(CURRENT_USER).scalar() == tenant_role(b)
            assert session.scalars(select(Note.body)).all() == ["x"]
        sa_tenancy.drop_tenant(owner_engine, b, tenant_roles=roles)
        assert not _exists(fleet_engine, tenant_role(b))
    finally:
        app.dispose()
        owner_engine.dispose()
        with fleet_engine.begin() as conn:
            for role in (tenant_role(a), tenant_role(b), owner):
                _drop_role(conn, role)


def test_tenant_roles_settings_are_validated_before_any_sql():
    with pytest.raises(sa_tenancy.InvalidSchemaName):
        TenantRoles(prefix="Bad_")
    with pytest.raises(sa_tenancy.TenancyError):
        TenantRoles(shared_schemas="shared")
    with pytest.raises(sa_tenancy.TenancyError):
        TenantRoles(grant_to="")
    with pytest.raises(sa_tenancy.TenancyError):
        sa_tenancy.install(sessionmaker(), tenant_roles="yes")  # type: ignore[arg-type]


def test_asyncpg_sets_the_role_with_an_ordinary_statement(fleet, app_url, login):
    pytest.importorskip("greenlet")
    pytest.importorskip("asyncpg")
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.ext.asyncio import create_async_engine

    from sa_tenancy.testing import url_for_driver

    (a,) = fleet(1)
    (bare,) = fleet(1, roles=False)

    async def main() -> None:
        engine = create_async_engine(url_for_driver(app_url, "asyncpg"), pool_size=1)
        made = async_sessionmaker(engine)
        sa_tenancy.install(made, tenant_roles=True)
        try:
            async with made(info={"schema": a}) as session:
                assert (await session.execute(CURRENT_USER)).scalar() == tenant_role(a)
                assert (await session.scalars(select(Note.body))).all() == [a]
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT current_user"))).scalar() == login
            with pytest.raises(sa_tenancy.TenantRoleMissing):
                async with made(info={"schema": bare}) as session:
                    await session.execute(CURRENT_USER)
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_a_leftover_role_loses_its_old_privileges(fleet, factory, pg_engine):
    """Renamed without tenant_roles, the old role keeps privileges on the renamed schema (by
    OID); a new tenant of the old name must not inherit them."""
    (a,) = fleet(1)
    moved = unique_name("rt")
    fleet.track(moved)
    sa_tenancy.rename_tenant(pg_engine, a, moved)  # the role stays behind, still granted
    sa_tenancy.create_tenant(pg_engine, a, metadata=tenant_metadata, tenant_roles=fleet.roles)
    with factory(info={"schema": a}) as session:
        assert session.scalars(select(Note.body)).all() == []
        with pytest.raises(sa_exc.ProgrammingError) as caught:
            session.execute(text(f'SELECT * FROM "{moved}".notes').execution_options(**RAW))
        assert _sqlstate(caught.value) == "42501"
