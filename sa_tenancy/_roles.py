"""A PostgreSQL role per tenant: its name, and running each tenant transaction as it (private).

Without it, isolation is the application's doing: the login role can read every schema, so one
raw SQL string naming another schema reads another tenant's rows. With ``tenant_roles=True``
every tenant transaction also runs as the tenant's own ``NOLOGIN`` role, which the lifecycle
(:mod:`sa_tenancy._role_ddl`) lets use exactly its own schema: PostgreSQL itself then refuses
a statement that reaches another tenant, ``public`` or the ledger.

**The role name** (:func:`tenant_role`) is ``<prefix>t_<tenant>`` when that fits PostgreSQL's
63 bytes, else ``<prefix>h_<32 hex digits of SHA-256(tenant)>_<start of tenant>``. The prefix
(default ``sa_``) is a lowercase letter, up to 15 lowercase letters or digits, and one ``_``:
its only underscore ends it, so the prefix, then the form (``t`` or ``h``), can be read back
from any role name. Hence two tenants never share a role: two plain names differ where the
tenants differ, a plain name never equals a hashed one (``t_`` against ``h_``), two hashed
names would need a 128-bit SHA-256 collision, and roles of different prefixes differ in the
prefix. Roles are cluster-wide while schemas belong to one database: two databases of one
server that both have a tenant ``acme`` need different prefixes (``TenantRoles(prefix=
"billing_")``), and the lifecycle refuses to take over a role it did not make for this database
(the role's comment records it).

**At begin**, ``SET LOCAL ROLE`` travels in the same message as the tenant's path on psycopg
(no round trip more, except in the first tenant transaction of each pooled connection, which
checks the login role first); elsewhere ``set_config('role', :role, true)`` runs before the path
statement (checked on PostgreSQL 15: the same transaction-scoped effect, the same membership
check). ``COMMIT`` and ``ROLLBACK`` bring the login role back, so a pooled connection, or a
PgBouncer server connection in transaction mode, never keeps a tenant's role. A role that does
not exist, or that the login role is not a member of, makes the server refuse the begin:
:class:`~sa_tenancy.TenantRoleMissing`, and the transaction is aborted, so nothing runs as the
login role.

**A superuser login is refused** (:class:`~sa_tenancy.TenancyError`), checked once per pooled
connection: a superuser may ``SET ROLE`` to anyone and ``SET SESSION AUTHORIZATION``, so the
boundary would hang on nothing. A non-superuser login can still leave the tenant's role with
``RESET ROLE`` or ``set_config('role', ...)`` in its own SQL, and ``SET ROLE`` to another tenant
it is a member of: the roles stop mistakes and SQL that names the wrong schema, not an attacker
who writes whole statements (see ``docs/reliability.md``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ._keys import ALLOW_RAW_SQL
from ._keys import SAVED_ROLE_OPTION
from .exc import FAIL_CLOSED
from .exc import InvalidSchemaName
from .exc import TenancyError
from .exc import TenantRoleMissing
from .names import _base_check
from .names import validate_extra_schema

__all__ = [
    "DEFAULT_ROLE_PREFIX",
    "TenantRoles",
    "check_login",
    "check_prefix",
    "missing_role",
    "resolve",
    "set_role",
    "tenant_role",
]

DEFAULT_ROLE_PREFIX = "sa_"
_PREFIX = re.compile(r"[a-z][a-z0-9]{0,15}_")
_MAX_BYTES = 63
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX = 32
#: pool entry info: the login role of this DBAPI connection was checked (not a superuser).
LOGIN_CHECKED = "sa_tenancy_login_checked"
_OURS = {ALLOW_RAW_SQL: True}
#: The login role: a superuser? does it inherit the privileges of a tenant role it belongs to
#: (role attribute INHERIT on PostgreSQL 15, the membership's INHERIT option from 16 on:
#: ``pg_has_role(..., 'USAGE')`` answers both)? Tenant roles are known by their comment.
_ROLE_MARK_LIKE = r"sa\_tenancy:role:%"  # the comment of every tenant role (_role_ddl)
_LOGIN = text(
    "SELECT r.rolsuper, EXISTS (SELECT 1 FROM pg_auth_members AS m "
    "JOIN pg_shdescription AS d ON d.objoid = m.roleid "
    "AND d.classoid = 'pg_authid'::regclass "
    "WHERE m.member = r.oid AND d.description LIKE :mark "
    "AND pg_has_role(r.oid, m.roleid, 'USAGE')) "
    "FROM pg_roles AS r WHERE r.rolname = session_user"
).execution_options(**_OURS)
_SET_ROLE = text(
    "SELECT set_config('role', :role, true), prev "
    "FROM (SELECT current_setting('role') AS prev OFFSET 0) AS s"
).execution_options(**_OURS)


def check_prefix(prefix: object) -> str:
    """Validate a role prefix: ``[a-z][a-z0-9]{0,15}_``, and not ``pg_`` (PostgreSQL's own)."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix) or prefix == "pg_":
        raise InvalidSchemaName(
            f"role prefix {prefix!r} is not allowed: it must be a lowercase letter, up to 15 "
            "lowercase letters or digits, then one '_' (e.g. 'billing_'), and not 'pg_'"
        )
    return prefix


def tenant_role(name: str, *, prefix: str = DEFAULT_ROLE_PREFIX) -> str:
    """The PostgreSQL role that tenant ``name`` runs as with ``tenant_roles=True``.

    Deterministic, at most 63 bytes, and never the same for two tenant names:
    ``<prefix>t_<name>`` when it fits, else ``<prefix>h_<sha256 hex[:32]>_<start of name>``.
    Give each database of a server its own ``prefix`` when their tenant names may meet.

    :raises InvalidSchemaName: if ``name`` is not a possible tenant name (1 to 63 UTF-8 bytes,
        no control characters, not a system schema) or ``prefix`` is malformed.

    Example::

        sa_tenancy.tenant_role("acme")                     # 'sa_t_acme'
        sa_tenancy.tenant_role("acme", prefix="billing_")  # 'billing_t_acme'
    """
    prefix = check_prefix(prefix)
    name = _base_check(name, what="tenant name", allow_public=False)
    plain = f"{prefix}t_{name}"
    if len(plain.encode("utf-8")) <= _MAX_BYTES:
        return plain
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_HEX]
    head = f"{prefix}h_{digest}_"
    room = _MAX_BYTES - len(head)
    # Cut on a character boundary: the tail is only there for people reading pg_roles.
    return head + name.encode("utf-8")[:room].decode("utf-8", "ignore")


@dataclass(frozen=True)
class TenantRoles:
    """How tenants get their PostgreSQL roles; ``tenant_roles=True`` means ``TenantRoles()``.

    :param prefix: the role name prefix (see :func:`tenant_role`); one per database that shares
        a server with another database of sa_tenancy tenants.
    :param grant_to: the role the application logs in as, made a member of each tenant role.
        Default: the role the lifecycle call connects as (``session_user``). Set it when
        lifecycle runs as an owner or admin role and the app connects as another.
    :param shared_schemas: schemas every tenant role may read: ``USAGE`` and ``SELECT`` on their
        tables, now and later (tables the lifecycle role adds), through the group role
        :attr:`shared_role` that every tenant role belongs to.
    """

    prefix: str = DEFAULT_ROLE_PREFIX
    grant_to: str | None = None
    shared_schemas: Sequence[str] = field(default=())

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if isinstance(self.shared_schemas, str):
            raise TenancyError(
                f"shared_schemas must be a list of names, not {self.shared_schemas!r}"
            )
        shared = tuple(validate_extra_schema(s) for s in self.shared_schemas)
        object.__setattr__(self, "shared_schemas", shared)
        grant_to = self.grant_to
        if grant_to is not None and (
            not isinstance(grant_to, str) or not grant_to or _CONTROL.search(grant_to)
        ):
            raise TenancyError(f"grant_to must be a role name or None, not {grant_to!r}")

    def role(self, schema: str) -> str:
        """The role of tenant ``schema``."""
        return tenant_role(schema, prefix=self.prefix)

    @property
    def shared_role(self) -> str:
        """The group role that reads the shared schemas: ``<prefix>shared``.

        Every tenant role is a member, so a shared table made later is readable by all tenants
        through one default privilege, not one per tenant. It never equals a tenant's role
        (those continue the prefix with ``t_`` or ``h_``).
        """
        return f"{self.prefix}shared"


TenantRoles.__module__ = "sa_tenancy"


def resolve(tenant_roles: bool | TenantRoles | None) -> TenantRoles | None:
    """``tenant_roles=`` as given to install or a lifecycle call: None when off."""
    if tenant_roles is None or tenant_roles is False:
        return None
    if tenant_roles is True:
        return TenantRoles()
    if isinstance(tenant_roles, TenantRoles):
        return tenant_roles
    raise TenancyError(f"tenant_roles must be True, False or a TenantRoles, not {tenant_roles!r}")


def check_login(connection: Connection) -> None:
    """Refuse a login role the tenant roles cannot bound, once per pooled connection.

    A superuser may take any role back in its own SQL, so a tenant role would guard nothing.
    A login role that *inherits* the tenant roles' privileges holds every tenant's tables
    itself: a session without a tenant, or SQL that says ``RESET ROLE``, would read them all.
    It must be a member without inheritance (``ALTER ROLE app NOINHERIT``): membership still
    lets it ``SET ROLE`` to each tenant's role, and nothing more.
    """
    home = connection.connection.info
    if home.get(LOGIN_CHECKED):
        return
    superuser, inherits = connection.execute(_LOGIN, {"mark": _ROLE_MARK_LIKE}).one()
    if superuser:
        raise TenancyError(
            "tenant_roles=True cannot protect anything on a superuser connection: a superuser "
            "may switch to any role in its own SQL. Connect the application as a role without "
            "SUPERUSER (lifecycle and migrations may keep an owner role)."
        )
    if inherits:
        raise TenancyError(
            "the login role inherits the privileges of tenant roles (INHERIT): outside a "
            "tenant transaction, or after RESET ROLE, it could read every tenant. Make it a "
            "member without inheritance: ALTER ROLE <login> NOINHERIT (it may still SET ROLE "
            "to each tenant's role)."
        )
    home[LOGIN_CHECKED] = True


def missing_role(error: sa_exc.DBAPIError, role: str, tenant: str) -> TenantRoleMissing | None:
    """The :class:`TenantRoleMissing` that a failed ``SET ROLE`` means, or None."""
    code = getattr(error.orig, "sqlstate", None)
    # SET ROLE says undefined_object; set_config('role', ...) invalid_parameter_value.
    if code in ("42704", "22023"):
        why = "does not exist"
    elif code == "42501":  # insufficient_privilege
        why = "is not granted to the login role"
    else:
        return None
    missing = TenantRoleMissing(
        f"the role {role!r} of tenant {tenant!r} {why}; nothing ran. Create or repair it with "
        "sa_tenancy.sync_tenant_roles(engine) or `sa-tenancy roles sync` (as a role with "
        "CREATEROLE), or pass grant_to= the app's login role"
    )
    # The server aborted the transaction: no statement can run in it, as any role.
    setattr(missing, FAIL_CLOSED, True)
    return missing


def set_role(connection: Connection, role: str, tenant: str, *, outlives: bool) -> None:
    """Run the rest of the transaction as ``role`` with an ordinary statement (no BEGIN trick)."""
    try:
        prev = connection.execute(_SET_ROLE, {"role": role}).one()[1]
    except sa_exc.DBAPIError as error:
        missing = missing_role(error, role, tenant)
        if missing is None:
            raise
        raise missing from error
    if outlives and connection.get_execution_options().get(SAVED_ROLE_OPTION) is None:
        connection.execution_options(**{SAVED_ROLE_OPTION: prev})
