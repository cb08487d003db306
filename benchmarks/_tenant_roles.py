"""``--tenant-roles``: the benchmark's tenants get PostgreSQL roles, the app a plain login.

``tenant_roles=True`` refuses a superuser connection, so with this option every candidate
(``plain`` included, so the comparison stays fair) connects as a non-superuser login role made
for the run, with the privileges an ordinary application role has on every schema. The tenant
roles come from :func:`sa_tenancy.sync_tenant_roles`, under a prefix of this run's own; all
roles are dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager

from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import make_url

import sa_tenancy


@contextmanager
def login_with_roles(
    url: str, tenants: Sequence[str]
) -> Iterator[tuple[str, sa_tenancy.TenantRoles]]:
    """Yield ``(url as the login role, the TenantRoles to install with)``."""
    run = uuid.uuid4().hex[:10]
    login = f"bench_app_{run}"
    roles = sa_tenancy.TenantRoles(prefix=f"b{run}_", grant_to=login)
    owner = create_engine(url)
    try:
        with owner.begin() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{login}" LOGIN NOSUPERUSER NOINHERIT')
            for schema in ("public", *tenants):
                conn.exec_driver_sql(
                    f'GRANT USAGE ON SCHEMA "{schema}" TO "{login}"; '
                    f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" '
                    f'TO "{login}"; GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA '
                    f'"{schema}" TO "{login}"'
                )
        sa_tenancy.sync_tenant_roles(owner, tenant_roles=roles, tenants=list(tenants))
        yield make_url(url).set(username=login, password=None).render_as_string(False), roles
    finally:
        with owner.begin() as conn:
            for role in [login, *(roles.role(t) for t in tenants)]:
                found = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
                if found.first() is not None:
                    conn.exec_driver_sql(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
        owner.dispose()
