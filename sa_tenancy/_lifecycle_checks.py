"""The checks every lifecycle and reservoir call makes before it sends any SQL.

:mod:`sa_tenancy.lifecycle` and :mod:`sa_tenancy.reservoir` (and :mod:`sa_tenancy._adopt`)
validate names the same way: the name policy first, then the backend's own rules, and on SQLite
the tenant's file. They also refuse a backend an operation does not support with the same
message. These checks live here, below all of them, so each public module can use them without
importing another public module (imports stay one-way).
"""

from __future__ import annotations

import os

from sqlalchemy.engine import Engine

from . import _dialect_names
from . import _lifecycle_sqlite as _sqlite
from . import _roles
from ._roles import TenantRoles
from .exc import TenancyError
from .names import NamePolicy

_DEFAULT_POLICY = NamePolicy()


def _validate(schema: object, names: NamePolicy | None) -> str:
    """Check ``schema`` against the policy (default: the strict one); no backend needed."""
    return (names or _DEFAULT_POLICY).validate(schema)


def _name(bind: Engine, schema: object, names: NamePolicy | None) -> str:
    """The policy, then the rules of ``bind``'s backend, before anything is sent."""
    checked = _validate(schema, names)
    return _dialect_names.check(bind.dialect.name, checked, default_database=bind.url.database)


def _tenant(
    bind: Engine,
    schema: object,
    names: NamePolicy | None,
    directory: str | os.PathLike[str] | None,
) -> str:
    """:func:`_name`, and on SQLite: the tenant's file is not the main database file."""
    checked = _name(bind, schema, names)
    if bind.dialect.name == "sqlite":
        path = _sqlite.tenant_path(bind, checked, directory)
        _dialect_names.check_sqlite_file(checked, path, bind.url.database)
    return checked


def _unsupported(bind: Engine, what: str) -> TenancyError:
    return TenancyError(f"{what} does not support the {bind.dialect.name} dialect")


def _pg_only(bind: Engine, what: str) -> None:
    if bind.dialect.name != "postgresql":
        raise TenancyError(f"{what} is supported on PostgreSQL only, not {bind.dialect.name}")


def _roles_for(bind: Engine, tenant_roles: bool | TenantRoles) -> TenantRoles | None:
    roles = _roles.resolve(tenant_roles)
    if roles is not None:
        _pg_only(bind, "tenant_roles")
    return roles
