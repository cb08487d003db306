"""The reservoir: spare, fully built tenant schemas, claimed in milliseconds (PostgreSQL).

Building a tenant (``create_all`` or replaying migrations) takes long enough to show in a
signup. :func:`fill_reservoir` builds spare schemas ahead of time, from a scheduled job, and
:func:`claim_tenant` turns one into a tenant with ``ALTER SCHEMA ... RENAME`` in one short
transaction; :func:`reservoir_size` tells the job how many are left.

A spare is named ``sa_spare_<hex>`` and marked ``sa_tenancy:spare``: every name policy refuses
that prefix, so no session and no other lifecycle call (:mod:`sa_tenancy.lifecycle`) can use a
spare before it is claimed, and it is never listed as a tenant. The fleet migration runner
migrates spares with the tenants, so a claimed spare is always current. Every operation here
writes the spare's or tenant's Alembic revision to the ledger ``sa_tenancy.tenant_versions`` in
the same transaction (see :mod:`sa_tenancy._ledger`).

Each namespace (see :mod:`sa_tenancy._namespace`) has its own reservoir. Names are checked
before any SQL, exactly as in :mod:`sa_tenancy.lifecycle` (:mod:`sa_tenancy._lifecycle_checks`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from sqlalchemy import MetaData
from sqlalchemy.engine import Engine

from . import _lifecycle_pg as _pg
from . import _namespace
from . import _roles
from ._lifecycle_checks import _name
from ._lifecycle_checks import _pg_only
from ._roles import TenantRoles
from .names import NamePolicy

if TYPE_CHECKING:
    from alembic.config import Config

    AlembicConfig = str | os.PathLike[str] | Config

__all__ = ["claim_tenant", "fill_reservoir", "reservoir_size"]


def fill_reservoir(
    bind: Engine,
    count: int,
    *,
    metadata: MetaData | None = None,
    template: str | None = None,
    alembic_config: AlembicConfig | None = None,
    data: bool = False,
    namespace: str | None = None,
    tenant_roles: bool | TenantRoles = False,
) -> list[str]:
    """Add ``count`` spare, fully built schemas to the reservoir (PostgreSQL).

    Each spare is built exactly like a tenant (from ``template`` by
    :func:`~sa_tenancy.clone_tenant`'s copy, or from ``metadata``/``alembic_config`` as in
    :func:`~sa_tenancy.create_tenant`), one transaction each, but marked ``sa_tenancy:spare``:
    it is not listed as a tenant, and the fleet migration runner migrates it with the tenants, so
    a claimed spare is always current. Run it from a scheduled job to keep the reservoir topped
    up (see :func:`reservoir_size`).

    Spare names (``sa_spare_<hex>``) are refused by every name policy, so no session and no
    other lifecycle call can use a spare before :func:`claim_tenant` renames it.

    Each namespace has its own reservoir: a spare filled for ``namespace`` is claimed only by
    :func:`claim_tenant` with the same ``namespace`` (and ``template`` must be its tenant).

    :returns: the names of the new spares (``sa_spare_<hex>``).
    """
    ns = _namespace.check(namespace)
    _pg_only(bind, "fill_reservoir")
    if template is not None:
        template = _name(bind, template, None)
    return _pg.fill_reservoir(bind, count, metadata=metadata, template=template,
                              alembic_config=alembic_config, data=data,
                              namespace=ns, roles=_roles.resolve(tenant_roles))  # fmt: skip


def reservoir_size(bind: Engine, *, namespace: str | None = None) -> int:
    """How many spare schemas of ``namespace`` are waiting to be claimed."""
    ns = _namespace.check(namespace)
    _pg_only(bind, "reservoir_size")
    return _pg.reservoir_size(bind, namespace=ns)


def claim_tenant(
    bind: Engine,
    schema: str,
    *,
    names: NamePolicy | None = None,
    namespace: str | None = None,
    tenant_roles: bool | TenantRoles = False,
) -> str:
    """Create tenant ``schema`` by claiming a spare schema from the reservoir (PostgreSQL).

    One short transaction: take a spare's ledger row with ``FOR UPDATE SKIP LOCKED`` (so
    concurrent signups never claim the same spare and never wait for each other), ``ALTER
    SCHEMA ... RENAME`` it, mark it a tenant, record it. A few milliseconds instead of a build.

    :raises ReservoirEmpty: if no spare of ``namespace`` is left (call :func:`fill_reservoir`
        with the same namespace, or fall back to :func:`~sa_tenancy.create_tenant`).
    :raises TenancyError: if ``schema`` already exists; the spare stays in the reservoir.
    """
    ns = _namespace.check(namespace)
    schema = _name(bind, schema, names)
    _pg_only(bind, "claim_tenant")
    _pg.claim(bind, schema, namespace=ns, roles=_roles.resolve(tenant_roles))
    return schema
