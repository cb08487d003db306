"""Create, clone, rename, drop, list and check tenants.

A tenant is a schema (PostgreSQL), a database (MySQL/MariaDB) or a file (SQLite, see
:mod:`sa_tenancy.sqlite`) holding the tables of the application's ``MetaData`` that are declared
without a schema. This module is the one API over three private backends
(:mod:`~sa_tenancy._lifecycle_pg`, :mod:`~sa_tenancy._lifecycle_mysql`,
:mod:`~sa_tenancy._lifecycle_sqlite`); it validates every name before any SQL or file operation:

1. the name policy (``names=``, default ``[a-z_][a-z0-9_]*``), whose fixed rules also refuse
   system schemas, the ledger schema ``sa_tenancy`` and the reservoir's spares ``sa_spare_*``
   (a spare becomes a tenant only through :func:`~sa_tenancy.claim_tenant`);
2. the backend's own rules (:mod:`sa_tenancy._dialect_names`), whatever the policy says: on
   MySQL/MariaDB the URL's database and the system databases, on SQLite ``main``/``temp``, any
   name that is not a plain file name, and the main database file itself.

**Lifecycle never touches what it did not make.** ``create_tenant`` marks each tenant, and
listing, existence checks, renames and drops consider marked tenants only:

* PostgreSQL: the schema comment ``sa_tenancy:tenant`` (``sa_tenancy:spare`` for the reservoir);
* MySQL/MariaDB: the one-row table ``_sa_tenancy_tenant`` inside the tenant database;
* SQLite: ``PRAGMA application_id`` of the tenant file set to ``0x7361546E`` (``saTn``).

Each mark travels with what it marks (renames, dumps, file copies). An unmarked schema,
database or file is never listed and never dropped (:class:`~sa_tenancy.UnknownSchema`), and
``create_tenant`` never replaces one: it raises :class:`~sa_tenancy.TenancyError`, even with
``exist_ok=True``, which only means "a *tenant* of that name exists already". An existing
schema becomes a tenant only when asked to, through :func:`sa_tenancy.adopt_schema`.

**Namespaces** let several applications keep tenants in one database: every function here
takes ``namespace=`` (``None``: the default namespace, where every older tenant lives; else
``[a-z][a-z0-9_]{0,30}``, checked before any SQL). It is part of the mark (see
:mod:`sa_tenancy._namespace`), so another namespace's tenant is never listed, and dropping,
renaming or cloning it raises :class:`~sa_tenancy.UnknownSchema`. Tenant names are still one
set per database.

Provisioning fast, on PostgreSQL: :func:`clone_tenant` copies a template tenant server-side;
:func:`~sa_tenancy.fill_reservoir` prepares spare, fully built schemas ahead of time and
:func:`~sa_tenancy.claim_tenant` turns one into a tenant with ``ALTER SCHEMA ... RENAME`` (see
:mod:`sa_tenancy.reservoir`). Every operation there writes the tenant's Alembic revision to
the ledger ``sa_tenancy.tenant_versions`` in the same transaction (see :mod:`sa_tenancy._ledger`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from sqlalchemy import MetaData
from sqlalchemy.engine import Engine

from . import _lifecycle_mysql as _mysql
from . import _lifecycle_pg as _pg
from . import _lifecycle_sqlite as _sqlite
from . import _namespace
from . import _roles
from ._ledger import TENANT_MARK
from ._lifecycle_checks import _name
from ._lifecycle_checks import _pg_only
from ._lifecycle_checks import _roles_for
from ._lifecycle_checks import _tenant
from ._lifecycle_checks import _unsupported
from ._roles import TenantRoles
from .exc import InvalidSchemaName
from .exc import TenancyError
from .exc import UnknownSchema
from .names import NamePolicy

if TYPE_CHECKING:
    from alembic.config import Config

    AlembicConfig = str | os.PathLike[str] | Config

__all__ = [
    "TENANT_MARK",
    "clone_tenant",
    "create_tenant",
    "drop_tenant",
    "list_tenants",
    "rename_tenant",
    "tenant_exists",
]

#: Only the fixed rules: what a listed tenant's name must satisfy, whatever made it.
_ANY_NAME = NamePolicy(lambda name: True)
#: Above this many catalog objects a PostgreSQL schema is dropped in batches of tables.
_DROP_AT_ONCE = 1000
_MYSQL = ("mysql", "mariadb")


def create_tenant(
    bind: Engine,
    schema: str,
    *,
    metadata: MetaData | None = None,
    names: NamePolicy | None = None,
    directory: str | os.PathLike[str] | None = None,
    exist_ok: bool = False,
    alembic_config: AlembicConfig | None = None,
    namespace: str | None = None,
    tenant_roles: bool | TenantRoles = False,
) -> str:
    """Create tenant ``schema`` with the schema-less tables of ``metadata``, and mark it.

    On PostgreSQL the schema, its tables, its tenant mark, its Alembic version and its ledger
    row are written in one transaction: a failure leaves nothing behind. With ``alembic_config``
    (a path to ``alembic.ini`` or an ``alembic.config.Config``) and ``metadata``, the new tenant
    is stamped at head, so later migrations do not replay history on tables that
    ``create_all`` already made current; with ``alembic_config`` and no ``metadata``, the tables
    come from running the migrations up to head, in the same transaction.

    On MySQL/MariaDB (``CREATE DATABASE`` is not transactional) the database is dropped again if
    creating a table fails; the marker table is made last. On SQLite the tenant is the file
    ``<directory>/<schema>.db`` (default: beside the main database file), built under a
    private name and published only when complete.

    Never overwrites: an existing schema, database or file that is not a tenant is refused
    (on PostgreSQL, :func:`~sa_tenancy.adopt_schema` makes an existing schema a tenant).

    :param exist_ok: return quietly if the *tenant* already exists (its tables are not
        checked), for idempotent provisioning at start-up.
    :param namespace: the namespace the tenant belongs to (default: the default namespace).
    :param tenant_roles: PostgreSQL: also make the tenant's ``NOLOGIN`` role, able to use its
        schema only, granted to the login role (see :class:`~sa_tenancy.TenantRoles`). The
        same parameter on clone, claim, fill, rename and drop keeps the role in step.
    :returns: the validated schema name.
    :raises InvalidSchemaName: for an invalid name or namespace, before anything is sent.
    :raises TenancyError: if the tenant already exists and ``exist_ok`` is false, or a schema,
        database or file of that name exists and is not a tenant of this namespace.
    """
    ns = _namespace.check(namespace)
    schema = _tenant(bind, schema, names, directory)
    dialect = bind.dialect.name
    if dialect not in ("postgresql", "sqlite", *_MYSQL):
        raise _unsupported(bind, "create_tenant")
    roles = _roles_for(bind, tenant_roles)
    if dialect == "sqlite":
        _sqlite.make_directories(bind, directory)
    if schema in _list(bind, directory, only=schema, namespace=ns):
        if exist_ok:
            return schema
        raise TenancyError(f"tenant {schema!r} already exists")
    if dialect == "postgresql":
        _pg.create(bind, schema, metadata=metadata, alembic_config=alembic_config, namespace=ns,
                   roles=roles)  # fmt: skip
    elif dialect == "sqlite":
        _sqlite.create(schema, _sqlite.tenant_path(bind, schema, directory), metadata, ns)
    else:
        _mysql.create(bind, schema, metadata, namespace=ns)
    return schema


def clone_tenant(
    bind: Engine,
    template: str,
    schema: str,
    *,
    data: bool = False,
    names: NamePolicy | None = None,
    namespace: str | None = None,
    tenant_roles: bool | TenantRoles = False,
) -> str:
    """Create tenant ``schema`` as a copy of tenant ``template`` (PostgreSQL), all or nothing.

    Copies enum types, sequences (owned by the copied columns), tables with their defaults,
    identity and generated columns, constraints, foreign keys and indexes, all pointing at the
    new schema, plus the template's ``alembic_version`` rows and ledger revision, so the clone is
    exactly as migrated as its template. With ``data=True`` every row is copied too (seed data)
    and sequences continue where the template's are. Views, functions and triggers are not
    copied.

    Much faster than ``create_all`` or replaying migrations: the catalog is read in a handful of
    queries and the whole DDL goes to the server in one round trip.

    The clone belongs to ``namespace``, and so must ``template``.

    :raises UnknownSchema: if ``template`` is not a tenant of ``namespace``.
    """
    ns = _namespace.check(namespace)
    schema = _name(bind, schema, names)
    template = _name(bind, template, names)
    _pg_only(bind, "clone_tenant")
    _pg.clone(bind, template, schema, data=data, namespace=ns, roles=_roles.resolve(tenant_roles))
    return schema


def rename_tenant(
    bind: Engine,
    old: str,
    new: str,
    *,
    names: NamePolicy | None = None,
    namespace: str | None = None,
    tenant_roles: bool | TenantRoles = False,
) -> str:
    """Rename tenant ``old`` to ``new`` (PostgreSQL); its ledger row follows in one transaction.

    Sequences, defaults and foreign keys refer to objects by OID and follow the rename. Refused
    while a migration holds the tenant's advisory lock.

    :raises UnknownSchema: if ``old`` is not a tenant of ``namespace``.
    :raises TenancyError: if ``new`` already exists or the tenant is being migrated.
    """
    ns = _namespace.check(namespace)
    old = _name(bind, old, names)
    new = _name(bind, new, names)
    _pg_only(bind, "rename_tenant")
    _pg.rename(bind, old, new, namespace=ns, roles=_roles.resolve(tenant_roles))
    return new


def tenant_exists(
    bind: Engine,
    schema: str,
    *,
    names: NamePolicy | None = None,
    directory: str | os.PathLike[str] | None = None,
    namespace: str | None = None,
) -> bool:
    """Whether tenant ``schema`` exists: a schema, database or file with ``namespace``'s mark."""
    ns = _namespace.check(namespace)
    schema = _tenant(bind, schema, names, directory)
    return schema in _list(bind, directory, only=schema, namespace=ns)


def list_tenants(
    bind: Engine,
    *,
    directory: str | os.PathLike[str] | None = None,
    namespace: str | None = None,
) -> list[str]:
    """Names of the tenants of ``namespace`` (marked ones only), sorted; spares are not tenants.

    :param namespace: ``None`` (the default namespace) or a name such as ``"billing"``:
        a lowercase letter, then up to 30 lowercase letters, digits or underscores.
    """
    return _list(bind, directory, namespace=_namespace.check(namespace))


def _list(
    bind: Engine,
    directory: str | os.PathLike[str] | None,
    only: str | None = None,
    *,
    namespace: str,
) -> list[str]:
    dialect = bind.dialect.name
    if dialect == "postgresql":
        found = _pg.list_marked(bind, only, namespace=namespace)
    elif dialect in _MYSQL:
        found = _mysql.list_marked(bind, only, namespace=namespace)
    elif dialect == "sqlite" and only is not None:
        path = _sqlite.tenant_path(bind, only, directory)
        found = [only] if _sqlite.is_marked(path, namespace) else []
    elif dialect == "sqlite":
        found = _sqlite.list_marked(bind, directory, namespace)
    else:
        raise TenancyError(f"tenants are not supported on the {dialect} dialect")
    # A mark on something no tenant name can reach (a marked main file, a database renamed by
    # hand to the URL's) does not make it a tenant: it could not be dropped or served either.
    return [n for n in found if _reachable(bind, n, directory)]


def _reachable(bind: Engine, name: str, directory: str | os.PathLike[str] | None) -> bool:
    try:
        _tenant(bind, name, _ANY_NAME, directory)
    except InvalidSchemaName:
        return False
    return True


def drop_tenant(
    bind: Engine,
    schema: str,
    *,
    names: NamePolicy | None = None,
    directory: str | os.PathLike[str] | None = None,
    batch_size: int = 100,
    namespace: str | None = None,
    tenant_roles: bool | TenantRoles = False,
) -> None:
    """Drop tenant ``schema`` of ``namespace`` and everything in it.

    On PostgreSQL a small tenant goes in one transaction. A tenant with more catalog objects
    than one transaction should lock is first unmarked (it stops being a tenant and leaves the
    ledger at once), then dropped ``batch_size`` tables per transaction, then the schema itself:
    a single ``DROP SCHEMA ... CASCADE`` takes a lock per object and can exhaust the server's
    shared lock table (``max_locks_per_transaction``). An interrupted drop can be finished by
    calling ``drop_tenant`` again. On SQLite the file goes, with its journal files.

    :raises UnknownSchema: if it is not a tenant of ``namespace`` (not marked as one), so a
        typo can never drop ``public``, a shared schema, another application's database or
        tenant, or a stray file.
    """
    ns = _namespace.check(namespace)
    schema = _tenant(bind, schema, names, directory)
    dialect = bind.dialect.name
    roles = _roles_for(bind, tenant_roles)
    if dialect == "postgresql":
        _pg.drop(bind, schema, batch_size=batch_size, at_once=_DROP_AT_ONCE, namespace=ns,
                 roles=roles)  # fmt: skip
    elif dialect in _MYSQL:
        _mysql.drop(bind, schema, namespace=ns)
    elif dialect == "sqlite":
        path = _sqlite.tenant_path(bind, schema, directory)
        if not _sqlite.is_marked(path, ns):
            raise UnknownSchema(
                f"{schema!r} is not a tenant of {_namespace.label(ns)}; nothing was dropped"
            )
        _sqlite.drop(path)
    else:
        raise _unsupported(bind, "drop_tenant")
