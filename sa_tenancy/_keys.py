"""Names of the private execution options and ``info`` keys sa_tenancy sets (private).

Two kinds of place hold sa_tenancy's per-connection bookkeeping, and the difference matters:

* **execution options set in place on a** :class:`~sqlalchemy.engine.Connection` live as long as
  that Python object. For a session bound to an engine it is made for one transaction and
  closed with it; for a session bound to a ``Connection`` it is the caller's object and
  outlives the session, so whatever is put there must be restored when the session's
  transaction ends.
* **the pool entry's** ``info`` **dictionary** (``connection.connection.info``) lives as long
  as the DBAPI connection, across checkouts: it is where a claim on the connection and the
  owner of its temporary objects are kept.
"""

from __future__ import annotations

# -- execution options on a Connection -------------------------------------------------------

#: The tenant a TranslateMap applied to this Connection (read by the statement guard).
TENANT_OPTION = "sa_tenancy_schema"
#: What TranslateMap found on the Connection before it applied a tenant: (map, compiled cache).
SAVED_MAP_OPTION = "sa_tenancy_saved_map"
#: The ``search_path`` the server transaction had before a tenant was applied to a Connection
#: that outlives the session (restored when the session's transaction ends).
SAVED_PATH_OPTION = "sa_tenancy_saved_path"
#: Connection option: the ``role`` an outer transaction had, put back at the session's end.
SAVED_ROLE_OPTION = "sa_tenancy_saved_role"
#: Set on a Connection the session did not make (a session bound to a Connection): it outlives
#: the session's transaction, so the tenant's path must be restorable.
OUTLIVES_OPTION = "sa_tenancy_outlives"
#: The claim of a Connection the session does not own: the statement guard refuses every
#: statement once the transaction the tenant was applied in has ended (rolled back or committed
#: by another session sharing the Connection, or by its owner), instead of letting the
#: Connection begin a new transaction without the tenant.
CLAIM_OPTION = "sa_tenancy_claim"
#: Why every statement on this Connection is refused (a session's begin was refused on a
#: DBAPI connection that another open session serves).
REFUSED_OPTION = "sa_tenancy_refused"
#: Lets one statement (or a whole connection) run raw SQL in a translate_map tenant transaction.
ALLOW_RAW_SQL = "sa_tenancy_allow_raw_sql"

# -- the pool entry's info (one DBAPI connection, across checkouts) --------------------------

#: The open session transactions using this DBAPI connection and the tenant they share.
CLAIM = "sa_tenancy_claim"
#: The tenant whose temporary objects the connection may hold (as of its last commit).
TEMP_OWNER = "sa_tenancy_temp_owner"
#: The tenant for which the open transaction discarded the temporary objects; it becomes the
#: owner if that transaction commits (a rollback brings the old objects back).
TEMP_PENDING = "sa_tenancy_temp_pending"
#: SQLite: the tenant file attached to this connection, as ``(schema, path)``.
SQLITE_ATTACHED = "sa_tenancy_sqlite_attached"
#: Names already checked to fit the server's identifier limit in its own encoding.
FITS = "sa_tenancy_fits"
#: MySQL/MariaDB: tenants checked to share no table name with the default database.
DEFAULT_DB_CHECKED = "sa_tenancy_default_db_checked"
#: The distinct tenants this DBAPI connection has served (with max_tenants_per_connection).
SERVED = "sa_tenancy_served"
#: Tenants this DBAPI connection has already found to exist and be usable (search_path).
VERIFIED = "sa_tenancy_verified"
