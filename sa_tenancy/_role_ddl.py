"""The tenant roles' DDL: create, grant, rename, drop, sync (private).

What a tenant's role (see :mod:`sa_tenancy._roles` for its name) is allowed, and nothing more:

* ``USAGE`` on its own schema;
* ``SELECT, INSERT, UPDATE, DELETE`` on its tables (views included), ``USAGE, SELECT, UPDATE``
  on its sequences, ``EXECUTE`` on its functions and procedures; types need nothing, since
  PostgreSQL grants ``USAGE`` on types to ``PUBLIC``;
* the same on objects made later in the schema by the role running the lifecycle call (the
  owner, who also runs the fleet migrations), through ``ALTER DEFAULT PRIVILEGES FOR ROLE
  <owner> IN SCHEMA <schema>``: a migration that adds a table leaves it usable at once;
* ``SELECT`` on the declared shared schemas' tables, now and later, as a member of the group role
  ``<prefix>shared``, which holds ``USAGE`` on them, ``SELECT`` on their tables and a default
  privilege for tables made there later (:func:`ensure_shared`);
* membership in the role for the login role (``grant_to``, default ``session_user``), so it can
  ``SET ROLE``; and, when the lifecycle role is not a superuser, for the lifecycle role too,
  which ``DROP OWNED BY`` needs at drop.

Each role is ``NOLOGIN`` and carries the comment ``sa_tenancy:role:<database>``: roles are
cluster-wide, and a role made for another database (same tenant name, same prefix) or by
someone else is never taken over, renamed or dropped: :class:`~sa_tenancy.TenancyError`.
Everything runs in the caller's transaction, so a tenant and its role appear and go together.
The lifecycle role needs ``CREATEROLE`` (or to be a superuser); some managed services give
neither, see ``docs/reliability.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine

from ._ledger import execute_ddl
from ._ledger import ident
from ._roles import TenantRoles
from .exc import TenancyError

__all__ = ["drop", "ensure", "ensure_shared", "rename", "sync"]

_MARK = "sa_tenancy:role:"


_SHARED_MARK = "sa_tenancy:shared:"


def _role_state(conn: Connection, role: str, mark: str = _MARK) -> tuple[bool, bool]:
    """(exists, made by sa_tenancy for this database)."""
    row = conn.execute(
        text(
            "SELECT shobj_description(oid, 'pg_authid') = :prefix || current_database() "
            "FROM pg_roles WHERE rolname = :role"
        ),
        {"role": role, "prefix": mark},
    ).first()
    return (False, False) if row is None else (True, bool(row[0]))


def ensure_shared(conn: Connection, settings: TenantRoles, schemas: Sequence[str]) -> str:
    """Make the shared-readers group role and let it read ``schemas``, now and later.

    ``USAGE`` on each schema, ``SELECT`` on its tables, and a default privilege for tables the
    lifecycle role makes there later (``create_shared_tables``, a migration of the shared
    schema): one grant per schema for every tenant at once, since each tenant role is a member.
    """
    group = settings.shared_role
    exists, ours = _role_state(conn, group, _SHARED_MARK)
    if not exists:  # two first tenants at once: one makes the group, the other waits and sees it
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": group})
        exists, ours = _role_state(conn, group, _SHARED_MARK)
    if exists and not ours:
        raise TenancyError(
            f"role {group!r} exists but was not made by sa_tenancy for this database as the "
            "shared-readers role; use another role prefix (TenantRoles(prefix='...'))"
        )
    g = ident(group)
    statements = []
    if not exists:
        database = conn.execute(text("SELECT current_database()")).scalar_one()
        statements += [
            f"CREATE ROLE {g} NOLOGIN",
            f"COMMENT ON ROLE {g} IS {_literal(_SHARED_MARK + database)}",
        ]
    for schema in schemas:
        s = ident(schema)
        statements += [
            f"GRANT USAGE ON SCHEMA {s} TO {g}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {g}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER IN SCHEMA {s} "
            f"GRANT SELECT ON TABLES TO {g}",
        ]
    for statement in statements:
        execute_ddl(conn, statement)
    return group


def _not_ours(role: str, schema: str) -> TenancyError:
    return TenancyError(
        f"role {role!r} (for tenant {schema!r}) exists but was not made by sa_tenancy for this "
        "database: roles are shared by every database of the server. Use another role prefix "
        "(TenantRoles(prefix='...')) for this database, or drop that role"
    )


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def grants(schema: str, role: str, settings: TenantRoles) -> list[str]:
    """The GRANT statements of a tenant role (idempotent: PostgreSQL ignores repeated grants)."""
    s, r = ident(schema), ident(role)
    statements = [
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
        f"GRANT EXECUTE ON ALL ROUTINES IN SCHEMA {s} TO {r}",
    ]
    default = f"ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER IN SCHEMA {s} GRANT"
    statements += [
        f"{default} SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r}",
        f"{default} USAGE, SELECT, UPDATE ON SEQUENCES TO {r}",
        f"{default} EXECUTE ON ROUTINES TO {r}",
        f"{default} USAGE ON TYPES TO {r}",
    ]
    if settings.shared_schemas:
        statements.append(f"GRANT {ident(settings.shared_role)} TO {r}")
    login = "SESSION_USER" if settings.grant_to is None else ident(settings.grant_to)
    statements.append(f"GRANT {r} TO {login}")
    return statements


def ensure(conn: Connection, schema: str, settings: TenantRoles) -> str:
    """Create the role of ``schema`` if needed, mark it, and grant exactly what it needs.

    An existing role first loses every privilege it has in this database (``DROP OWNED BY``,
    which owns nothing: a tenant role cannot create in its schema), so a repair also removes
    what it should not have.
    """
    role = settings.role(schema)
    exists, ours = _role_state(conn, role)
    if exists and not ours:
        raise _not_ours(role, schema)
    statements = []
    if exists:
        # Start from nothing: a role left by an earlier tenant of this name (dropped or renamed
        # without tenant_roles) still holds privileges, by OID, on that tenant's schema.
        statements.append(f"DROP OWNED BY {ident(role)}")
    else:
        database = conn.execute(text("SELECT current_database()")).scalar_one()
        statements += [
            f"CREATE ROLE {ident(role)} NOLOGIN",
            f"COMMENT ON ROLE {ident(role)} IS {_literal(_MARK + database)}",
        ]
    if settings.shared_schemas:
        ensure_shared(conn, settings, settings.shared_schemas)
    statements += grants(schema, role, settings)
    if not conn.execute(
        text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    ).scalar():
        # DROP OWNED BY (at drop) needs the role's privileges; a superuser has them anyway.
        statements.append(f"GRANT {ident(role)} TO CURRENT_USER")
    for statement in statements:  # one per message: Citus propagates role DDL, one at a time
        execute_ddl(conn, statement)
    return role


def rename(conn: Connection, old: str, new: str, settings: TenantRoles) -> str:
    """Rename the role of ``old`` after its schema was renamed to ``new`` (create it if none).

    Grants and default privileges name the role by OID: they follow the rename.
    """
    role, new_role = settings.role(old), settings.role(new)
    exists, ours = _role_state(conn, role)
    if exists and not ours:
        raise _not_ours(role, old)
    taken, taken_ours = _role_state(conn, new_role)
    if taken and not taken_ours:
        raise _not_ours(new_role, new)
    if taken:
        raise TenancyError(
            f"role {new_role!r} for tenant {new!r} already exists (left by an earlier tenant of "
            "that name?); drop it first (DROP OWNED BY, DROP ROLE), then rename again"
        )
    if exists:
        execute_ddl(conn, f"ALTER ROLE {ident(role)} RENAME TO {ident(new_role)}")
    return ensure(conn, new, settings)


def drop(conn: Connection, schema: str, settings: TenantRoles) -> None:
    """Drop the role of ``schema`` (after its schema), if sa_tenancy made it for this database."""
    role = settings.role(schema)
    exists, ours = _role_state(conn, role)
    if not exists:
        return
    if not ours:
        raise _not_ours(role, schema)
    execute_ddl(conn, f"DROP OWNED BY {ident(role)}")
    execute_ddl(conn, f"DROP ROLE {ident(role)}")


def sync(
    bind: Engine,
    schemas: list[str],
    settings: TenantRoles,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Ensure role and grants for each schema, one transaction each; go on after a failure.

    :returns: ``({tenant: role}, {tenant: error message})``.
    """
    roles: dict[str, str] = {}
    failed: dict[str, str] = {}
    for done, schema in enumerate(schemas, 1):
        try:
            with bind.begin() as conn:
                roles[schema] = ensure(conn, schema, settings)
        except (TenancyError, sa_exc.DBAPIError) as error:
            orig = getattr(error, "orig", None)
            failed[schema] = str(orig if orig is not None else error).strip().split("\n")[0]
        if progress is not None:
            progress(schema, done, len(schemas))
    return roles, failed
