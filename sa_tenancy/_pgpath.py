"""PostgreSQL: the transaction-scoped ``search_path`` of a tenant transaction (private).

Both strategies set a path on PostgreSQL, for the transaction only:

* :class:`~sa_tenancy.SearchPath` sets ``"tenant", pg_temp``: every unqualified name resolves
  in the tenant's schema, raw SQL included;
* :class:`~sa_tenancy.TranslateMap` sets an empty path: its statements are schema-qualified
  by SQLAlchemy, and whatever SQLAlchemy does not translate (``text()`` fragments inside a
  ``select()``, lightweight ``table()`` objects, ``DDL()``, a map replaced by the caller) then
  resolves nowhere and fails with "relation does not exist" (or "no schema has been selected to
  create in") instead of reading or writing ``public``.

``pg_temp`` is named last because PostgreSQL otherwise searches it *first*. A temporary table
lives as long as the server connection, so temporary objects are discarded when a tenant
transaction begins: on psycopg ``DISCARD TEMP`` travels in every ``BEGIN`` message (about a
microsecond of server time, no round trip), so no tenant transaction sees an object made in
another transaction, by another tenant, by plain code, or by another client behind PgBouncer.
Elsewhere it costs a statement of its own, so it is sent only when the pool entry may hold
another tenant's objects (the owner is recorded once a transaction commits: a rollback brings
the old objects back, and the next tenant discards them again). Inside one tenant transaction
temporary objects work as usual; they do not outlive it into the next one.

On psycopg 3 the path travels with the transaction's ``BEGIN`` (:mod:`sa_tenancy._psycopg`): no
round trip more than a plain transaction. Elsewhere, or when the server transaction is already
open, one ``set_config(..., true)`` statement does it, and also reports whether the tenant
exists, is usable, and is the schema the name means (a name longer than 63 bytes *in the
server's encoding* would be truncated by the server onto another schema).

A session bound to a ``Connection`` does not own it: the ``Connection`` outlives the session's
transaction, maybe inside an outer transaction that goes on. Then the previous path is read in
the same statement and put back by :func:`restore` when the session's transaction ends.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection

from . import _psycopg
from . import _roles
from ._keys import ALLOW_RAW_SQL
from ._keys import FITS
from ._keys import OUTLIVES_OPTION
from ._keys import SAVED_PATH_OPTION
from ._keys import SAVED_ROLE_OPTION
from ._keys import TEMP_OWNER
from ._keys import TEMP_PENDING
from ._keys import VERIFIED
from .exc import FAIL_CLOSED
from .exc import InvalidSchemaName
from .exc import UnknownSchema

__all__ = ["NO_SCHEMA", "apply", "fits_server", "pg_identifier", "restore"]

#: The path of a translate_map tenant transaction: empty, so nothing unqualified resolves (but
#: temporary objects, which PostgreSQL always searches) and nothing unqualified can be created.
NO_SCHEMA = ""
_UNKNOWN = object()
MAX_BYTES = 63

# One statement: read the path the transaction had, check the tenant, then set the tenant's path
# if the tenant is usable and is exactly the schema its name means, else a path that reaches
# nothing. OFFSET 0 keeps the subquery (and so the read of the old path) evaluated first.
# Our own statements may run on a Connection that already carries a translate-map tenant (a
# second session of the same tenant on one Connection): the raw-SQL guard lets them through.
_OURS = {ALLOW_RAW_SQL: True}
_SET_TENANT_PATH = text(
    "SELECT set_config('search_path', CASE WHEN ok THEN :path ELSE '' END, true), "
    "found, usable, nspname, prev FROM ("
    "SELECT n IS NOT NULL AS found, coalesce(has_schema_privilege(n, 'USAGE'), false) AS usable, "
    "nspname, coalesce(has_schema_privilege(n, 'USAGE') AND nspname = :name, false) AS ok, "
    "current_setting('search_path') AS prev "
    "FROM (SELECT to_regnamespace(CAST(:schema AS text)) AS n) AS t "
    "LEFT JOIN pg_namespace ON pg_namespace.oid = t.n OFFSET 0) AS s"
).execution_options(**_OURS)
_SET_PATH = text(
    "SELECT set_config('search_path', :path, true), prev "
    "FROM (SELECT current_setting('search_path') AS prev OFFSET 0) AS s"
).execution_options(**_OURS)
_RESTORE = text("SELECT set_config(:name, :value, true)").execution_options(**_OURS)
#: What a tenant changes on a Connection that outlives its session, and puts back: the option
#: that holds the outer transaction's value, and the setting.
_SAVED = ((SAVED_PATH_OPTION, "search_path"), (SAVED_ROLE_OPTION, "role"))
_OCTETS = text("SELECT octet_length(CAST(:name AS text))").execution_options(**_OURS)


def pg_identifier(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier, for use as a *value* or in unprocessed SQL.

    Not the dialect's ``quote_identifier``: for pyformat drivers (psycopg) SQLAlchemy also
    doubles ``%`` there, which is right in SQL text that goes through parameter formatting and
    wrong in a bound value or a parameterless simple query, where ``"%%"`` names another schema.
    """
    return '"' + name.replace('"', '""') + '"'


def _path_only(error: UnknownSchema) -> UnknownSchema:
    """Mark ``error`` as leaving a path that names no schema at all.

    Unqualified names then resolve nowhere, so the connection cannot reach the default schema
    and need not be invalidated: an unknown tenant (a 404 in a web app) costs no reconnect.
    """
    setattr(error, FAIL_CLOSED, True)
    return error


def apply(
    connection: Connection,
    path: str,
    *,
    tenant: str,
    check: bool,
    once: bool = False,
    role: str | None = None,
) -> None:
    """Set ``path`` for the transaction of ``connection``, which serves ``tenant``.

    :param check: confirm that ``tenant`` exists, is usable and is the schema its name means;
        raise (leaving a path that reaches nothing) otherwise.
    :param once: check only the first time this DBAPI connection serves ``tenant``. Sound only
        when the path holds nothing but the tenant (and ``pg_temp``): a tenant dropped, renamed
        or made unusable later then resolves nowhere, and its statements fail with "relation
        does not exist" instead of :class:`~sa_tenancy.UnknownSchema`.
    :param role: run the transaction as this role (``tenant_roles=True``, see
        :mod:`sa_tenancy._roles`); set before the path, so the check runs as the role too.
    """
    pooled = connection.connection
    home = pooled.info
    if once and check:
        verified: set[str] | None = home.get(VERIFIED)
        if verified is None:
            verified = home[VERIFIED] = set()
        elif tenant in verified:
            check = False
    discard = home.get(TEMP_OWNER, _UNKNOWN) != tenant
    outlives = connection.get_execution_options().get(OUTLIVES_OPTION, False)
    if connection.dialect.driver == "psycopg" and not outlives:
        # In the BEGIN message DISCARD TEMP costs no round trip and about a microsecond of
        # server time, so it is sent every time: no transaction of a tenant ever sees temporary
        # objects made in another transaction, whoever made them (plain code on the same pooled
        # connection, or another client behind PgBouncer's transaction pooling).
        try:
            current = _psycopg.begin_with_path(
                connection,
                pooled.driver_connection,
                path,
                check=check,
                discard_temp=True,
                role="" if role is None else pg_identifier(role),
            )
        except sa_exc.DBAPIError as refused:
            missing = None if role is None else _roles.missing_role(refused, role, tenant)
            if missing is None:
                raise
            raise missing from refused
        if current is not _psycopg.NOT_SENT:
            home[TEMP_PENDING] = tenant
            if not check:
                return
            if current == tenant:
                if once:
                    home[VERIFIED].add(tenant)
                return
            discard = False  # already done in this transaction
            # The tenant is not the first usable schema of the path: the statement below says why.
    if discard:
        connection.exec_driver_sql("DISCARD TEMP", execution_options=_OURS)
        home[TEMP_PENDING] = tenant
    if role is not None:
        _roles.set_role(connection, role, tenant, outlives=outlives)
    if not check:
        prev = connection.execute(_SET_PATH, {"path": path}).one()[1]
    else:
        params = {"path": path, "schema": pg_identifier(tenant), "name": tenant}
        _, found, usable, nspname, prev = connection.execute(_SET_TENANT_PATH, params).one()
        if not found:
            raise _path_only(
                UnknownSchema(
                    f"schema {tenant!r} does not exist; create the tenant first "
                    "(sa_tenancy.create_tenant) or check the name"
                )
            )
        if not usable:
            raise _path_only(
                UnknownSchema(
                    f"schema {tenant!r} exists but the current role has no USAGE privilege on "
                    "it; PostgreSQL would skip it on the search_path. GRANT USAGE to the app's "
                    "role (with tenant_roles, to the tenant's role: sync_tenant_roles)."
                )
            )
        if nspname != tenant:
            error = InvalidSchemaName(
                f"tenant schema name {tenant!r} is longer than {MAX_BYTES} bytes in the "
                f"server's encoding, which would truncate it to the schema {nspname!r}; use a "
                "shorter name"
            )
            setattr(error, FAIL_CLOSED, True)
            raise error
    if once and check:
        home[VERIFIED].add(tenant)
    if outlives and connection.get_execution_options().get(SAVED_PATH_OPTION) is None:
        connection.execution_options(**{SAVED_PATH_OPTION: prev})


def restore(connection: Connection) -> None:
    """Put back the path (and role) a Connection's outer transaction had before a tenant.

    Acts only on a Connection that outlives its session and still has its server transaction
    open (a session that joined an outer transaction or made a savepoint in it); elsewhere the
    transaction's end already reset both.
    """
    options = connection.get_execution_options()
    saved = [(key, name, options[key]) for key, name in _SAVED if options.get(key) is not None]
    if not saved:
        return
    connection.execution_options(**{key: None for key, _, _ in saved})
    if not connection.in_transaction():
        return
    for _, name, value in saved:
        try:
            connection.execute(_RESTORE, {"name": name, "value": value})
        except sa_exc.DBAPIError as error:
            # An aborted outer transaction runs nothing until it is rolled back, and that
            # rollback also undoes the tenant's path and role: nothing to restore.
            if getattr(error.orig, "sqlstate", None) != "25P02":  # in_failed_sql_transaction
                raise
            return


def fits_server(connection: Connection, name: str) -> None:
    """Refuse a name the server would truncate: 63 bytes counted in the *server's* encoding.

    :mod:`sa_tenancy.names` counts UTF-8 bytes; a non-ASCII name can take more bytes in the
    database's encoding (``é`` is 2 bytes in UTF-8, 3 in EUC_JP), and the server cuts every
    identifier at 63 of its own bytes, so two long names could address one schema. ASCII names
    (the default policy) take as many bytes in every server encoding and are never checked;
    other names once per pooled connection.
    """
    if name.isascii():
        return
    home = connection.connection.info
    fits: set[str] = home.setdefault(FITS, set())
    if name in fits:
        return
    size = connection.execute(_OCTETS, {"name": name}).scalar_one()
    if size > MAX_BYTES:
        raise InvalidSchemaName(
            f"tenant schema name {name!r} is {size} bytes in the server's encoding; the server "
            f"keeps only {MAX_BYTES} and would truncate it onto another schema. Use a shorter "
            "name."
        )
    fits.add(name)
