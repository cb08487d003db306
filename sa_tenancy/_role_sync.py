"""``sync_tenant_roles``: give every existing tenant its role, and repair the grants (private).

For a fleet made before ``tenant_roles`` (or after a grant was lost), run it as the owner role,
with ``CREATEROLE``. One short transaction per tenant, so thousands of tenants never hold one
long lock, and an interrupted run can simply be run again: every step is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import Engine

from . import _role_ddl
from . import _roles
from .exc import TenancyError
from .lifecycle import list_tenants
from .names import NamePolicy

__all__ = ["sync_tenant_roles"]

_ANY_NAME = NamePolicy(lambda name: True)


def sync_tenant_roles(
    bind: Engine,
    *,
    tenant_roles: bool | _roles.TenantRoles = True,
    tenants: list[str] | None = None,
    namespace: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    failed: dict[str, str] | None = None,
) -> dict[str, str]:
    """Create the missing roles of ``namespace``'s tenants and (re)grant what each needs.

    :param tenant_roles: ``True`` or the :class:`~sa_tenancy.TenantRoles` the app installs
        with (same prefix), plus ``grant_to`` and ``shared_schemas``.
    :param tenants: only these tenants (default: all of ``namespace``, see
        :func:`~sa_tenancy.list_tenants`).
    :param progress: called as ``progress(tenant, done, total)`` after each tenant.
    :param failed: a dict that receives ``{tenant: reason}`` for each tenant that could not be
        synced; without it, such failures raise :class:`~sa_tenancy.TenancyError` at the end
        (after every other tenant was synced).
    :returns: ``{tenant: role}`` for the tenants synced, in the order of the tenants.
    :raises TenancyError: on a dialect other than PostgreSQL, a tenant that does not exist (before
        any work), or a tenant that failed (a role of its name that sa_tenancy did not make for
        this database, a missing ``CREATEROLE``...).
    """
    settings = _roles.resolve(tenant_roles)
    if settings is None:
        raise TenancyError("sync_tenant_roles needs tenant_roles=True or a TenantRoles")
    if bind.dialect.name != "postgresql":
        raise TenancyError(f"tenant roles need PostgreSQL, not {bind.dialect.name}")
    existing = list_tenants(bind, namespace=namespace)
    if tenants is None:
        chosen = existing
    else:
        chosen = [_ANY_NAME.validate(t) for t in tenants]
        unknown = sorted(set(chosen) - set(existing))
        if unknown:
            raise TenancyError(f"not tenants of this namespace: {', '.join(unknown)}")
    roles, failures = _role_ddl.sync(bind, chosen, settings, progress)
    if failed is not None:
        failed.update(failures)
    elif failures:
        listed = "; ".join(f"{t}: {why}" for t, why in failures.items())
        raise TenancyError(f"{len(failures)} tenant(s) could not be synced: {listed}")
    return roles
