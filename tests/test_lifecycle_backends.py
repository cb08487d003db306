"""Reservoir spares are not tenants until claimed: every name policy refuses them.

A spare (``sa_spare_<hex>``) is a fully built, empty schema that the next signup will receive;
a session or lifecycle call that could use it first would plant rows the signup inherits.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import InvalidSchemaName
from sa_tenancy import NamePolicy
from sa_tenancy import _ledger
from sa_tenancy.testing import unique_name

from ._alembic_env import write_env
from .models import Note
from .models import tenant_metadata

WIDE = NamePolicy(r".*")


# -- spares are not tenants until claimed ------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [NamePolicy(), WIDE, NamePolicy(lambda name: True), NamePolicy({"sa_spare_x", "sa_tenancy"})],
    ids=["default", "regex", "predicate", "allowlist"],
)
def test_spare_and_ledger_names_refused_by_every_policy(policy):
    for name in ("sa_spare_x", "sa_spare_0123456789abcdef", "SA_SPARE_x", "sa_tenancy"):
        with pytest.raises(InvalidSchemaName, match="reservoir|ledger"):
            policy.validate(name)
    assert NamePolicy().validate("sa_sparex") == "sa_sparex"


@pytest.fixture
def pg_cleanup(pg_engine: Engine) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    with pg_engine.begin() as conn:
        for name in names:
            _ledger.execute_ddl(conn, f"DROP SCHEMA IF EXISTS {_ledger.ident(name)} CASCADE")
            if _ledger.exists(conn):
                _ledger.forget(conn, name)


def test_spares_cannot_be_used_before_they_are_claimed(pg_engine, pg_cleanup, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    spares = sa_tenancy.fill_reservoir(pg_engine, 1, metadata=tenant_metadata)
    spares += sa_tenancy.fill_reservoir(pg_engine, 1, alembic_config=ini)
    spares += sa_tenancy.fill_reservoir(pg_engine, 1, metadata=tenant_metadata, alembic_config=ini)
    pg_cleanup += spares
    spare = spares[0]
    tenant = unique_name("tn")
    pg_cleanup.append(tenant)
    sa_tenancy.create_tenant(pg_engine, tenant, metadata=tenant_metadata)
    for strategy in ("search_path", "translate_map"):
        factory = sessionmaker(pg_engine)
        installation = sa_tenancy.install(factory, strategy=strategy, names=WIDE)
        try:
            with factory(info={"schema": spare}) as session:
                with pytest.raises(InvalidSchemaName, match="reservoir"):
                    session.execute(select(Note.body))
        finally:
            installation.uninstall()
    for policy in (None, WIDE):
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.create_tenant(pg_engine, spare, names=policy, exist_ok=True)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.create_tenant(pg_engine, "sa_spare_planted", names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.rename_tenant(pg_engine, tenant, "sa_spare_planted", names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.rename_tenant(pg_engine, spare, unique_name("tn"), names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.clone_tenant(pg_engine, spare, unique_name("tn"), names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.clone_tenant(pg_engine, tenant, "sa_spare_planted", names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.drop_tenant(pg_engine, spare, names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.tenant_exists(pg_engine, spare, names=policy)
        with pytest.raises(InvalidSchemaName):
            sa_tenancy.claim_tenant(pg_engine, "sa_spare_planted", names=policy)
    with pg_engine.connect() as conn:
        planted = conn.execute(
            text("SELECT count(*) FROM pg_namespace WHERE nspname = 'sa_spare_planted'")
        ).scalar()
        assert planted == 0
        assert conn.execute(text(f'SELECT count(*) FROM "{spare}".notes')).scalar() == 0
    # The library's own paths still build, migrate and hand out spares.
    with pg_engine.connect() as conn:
        versions = {
            s: conn.execute(text(f'SELECT version_num FROM "{s}".alembic_version')).scalar()
            for s in spares[1:]
        }
    assert versions == {spares[1]: "r1", spares[2]: "r1"}
    claimed = unique_name("tn")
    pg_cleanup.append(claimed)
    size = sa_tenancy.reservoir_size(pg_engine)
    assert sa_tenancy.claim_tenant(pg_engine, claimed) == claimed
    assert claimed in sa_tenancy.list_tenants(pg_engine)
    assert sa_tenancy.reservoir_size(pg_engine) == size - 1
