"""Exceptions raised by sa_tenancy.

Every error the library raises is a :class:`TenancyError`, so an application can catch the whole
family in one place (for instance to turn it into an HTTP 4xx). The subclasses that describe bad
input also derive from the matching built-in (:class:`ValueError`, :class:`LookupError`), so code
that already handles those keeps working.

Each message says what happened and what to do next: a tenancy error is almost always a bug in
the calling code (a session made without a tenant, a tenant switched mid-session), and the
message is the first thing its author reads.
"""

from __future__ import annotations


class TenancyError(Exception):
    """Base class of every error raised by sa_tenancy.

    Raised directly when a strategy cannot work on the connection it was given (for example
    ``search_path`` on an ``AUTOCOMMIT`` connection, where ``SET LOCAL`` would silently do
    nothing) or when an installation is misused.
    """


class InvalidSchemaName(TenancyError, ValueError):
    """The schema name is not acceptable; no SQL containing it was sent.

    Also a :class:`ValueError`, so ``except ValueError`` in request-parsing code catches it.
    """


class UnknownSchema(TenancyError, LookupError):
    """The schema name is valid but no such schema exists (or it is not usable).

    PostgreSQL would silently skip a missing schema on the ``search_path`` and read ``public``
    instead; sa_tenancy refuses. Also a :class:`LookupError`.
    """


class SchemaRequired(TenancyError):
    """A session began a transaction without a tenant, and the installation requires one."""


class SchemaSwitchError(TenancyError):
    """The session's tenant changed while it still held state belonging to another tenant.

    Raised at the next transaction begin when the identity map still holds objects loaded for
    another tenant, and at the next execute or flush when the tenant changed in the middle of a
    transaction. Close the session (or ``expunge_all()``) before switching tenants, or better,
    use one session per tenant.
    """


class RawSQLRefused(TenancyError):
    """Raw SQL was executed in a tenant session whose strategy cannot route it.

    The ``translate_map`` strategy rewrites the schema of :class:`~sqlalchemy.schema.Table`
    objects only; a ``text()`` statement or driver-level SQL would silently run against the
    default schema, so it is refused.
    """


class ReservoirEmpty(TenancyError):
    """No spare schema is left to claim; fill the reservoir or create the tenant the slow way."""


class TenantRoleMissing(TenancyError):
    """A tenant transaction could not take the tenant's PostgreSQL role (``tenant_roles=True``).

    The role does not exist, or the login role is not a member of it. The server refused the
    transaction's begin, so nothing ran, as the tenant or as the login role. Create or repair
    the role with :func:`sa_tenancy.sync_tenant_roles` (or ``sa-tenancy roles sync``).
    """


class CitusRequired(TenancyError):
    """A Citus-only operation (moving tenants, their placement) ran on plain PostgreSQL.

    Nothing was sent beyond the check. Point the engine at a Citus coordinator, or leave the
    call out: on a single server every tenant is already in one place.
    """


#: Attribute a strategy sets (true) on an exception it raises after leaving the transaction's
#: connection unable to reach the default schema; after any other failure of a strategy the
#: connection is invalidated, so that no statement runs on it untenanted.
FAIL_CLOSED = "_sa_tenancy_fail_closed"


for _cls in (
    TenancyError,
    InvalidSchemaName,
    UnknownSchema,
    SchemaRequired,
    SchemaSwitchError,
    RawSQLRefused,
    ReservoirEmpty,
    TenantRoleMissing,
    CitusRequired,
):
    _cls.__module__ = "sa_tenancy"
del _cls
