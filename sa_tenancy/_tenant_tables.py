"""Creating a tenant's tables: the schema-less tables of the application's ``MetaData``.

Shared by the PostgreSQL and MySQL/MariaDB lifecycle backends (private). Tables are created
**through a translate map**, never through a ``search_path``: under a search path, PostgreSQL's
``has_table`` check can see a same-named table in another schema on the path and silently skip
creating the tenant's own.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy import Table
from sqlalchemy.engine import Connection

__all__ = ["create_tables", "tenant_tables"]


def tenant_tables(metadata: MetaData) -> list[Table]:
    """The tables of ``metadata`` that belong to each tenant (declared without a schema)."""
    return [t for t in metadata.sorted_tables if t.schema is None]


def create_tables(conn: Connection, schema: str, metadata: MetaData) -> None:
    """Create the tenant tables of ``metadata`` in ``schema``, on ``conn``'s transaction."""
    # Connection.execution_options() changes the connection in place: undo it afterwards.
    # checkfirst=False: the schema was created just before, so nothing can exist yet, and
    # PostgreSQL's has_table query scans every same-named table of every tenant.
    conn.execution_options(schema_translate_map={None: schema})
    try:
        metadata.create_all(conn, tables=tenant_tables(metadata), checkfirst=False)
    finally:
        conn.execution_options(schema_translate_map=None)
