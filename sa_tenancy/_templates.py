"""Files written by ``sa-tenancy alembic-init DIR``: a working per-tenant Alembic environment."""

from __future__ import annotations

ALEMBIC_INI = """\
# Alembic configuration for a schema-per-tenant database, made by `sa-tenancy alembic-init`.
# Every tenant schema has its own alembic_version table; run migrations for all tenants with
#   sa-tenancy migrate --config {ini}
# or for one tenant with
#   alembic -c {ini} -x tenant=NAME upgrade head
[alembic]
script_location = %(here)s
# Put the directory you run `alembic` or `sa-tenancy migrate` from on sys.path (in the
# migration worker processes too), so env.py can import your models, e.g. `import models`.
prepend_sys_path = .
path_separator = os
# The database URL: DATABASE_URL wins when it is set.
sqlalchemy.url =
"""

ENV_PY = '''\
"""Alembic environment: every migration runs inside one tenant schema.

sa_tenancy sets the tenant's search_path (transaction-scoped) and version table, so write
migrations without schema names: op.add_column("invoices", ...) alters the current tenant's
table.
"""

from alembic import context

from sa_tenancy.migrate import run_tenant_migrations

# For `alembic -x tenant=NAME revision --autogenerate`, point this at your models' MetaData,
# e.g.
#     from myapp.models import Base
#     target_metadata = Base.metadata
# (the tenant's alembic_version and sa_tenancy's own tables are never compared).
target_metadata = None

# Schemas searched after the tenant while migrating: add "public" when migrations use an
# extension's functions or types installed there, e.g. uuid_generate_v4() or citext.
extra_schemas: list[str] = []

run_tenant_migrations(context, target_metadata=target_metadata, extra_schemas=extra_schemas)
'''

SCRIPT_MAKO = '''\
"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
'''
