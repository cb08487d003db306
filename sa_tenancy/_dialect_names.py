"""Names that are never a tenant on a given backend, whatever the name policy says (private).

:mod:`sa_tenancy.names` checks what holds everywhere (type, length, control characters, the
PostgreSQL system schemas). What a name *means* depends on the backend, and some valid-looking
names mean the default schema or a system one there:

* MySQL/MariaDB: a tenant is a database. The database the URL names is the connection's default
  (untranslated SQL reads it), and ``mysql``, ``sys``, ``performance_schema`` and
  ``information_schema`` are the server's own. Database names compare case-insensitively
  (``lower_case_table_names``), so the comparison is too.
* SQLite: a tenant is a file ``<directory>/<name>.db`` attached under ``name``. ``main`` and
  ``temp`` are SQLite's own schema names (case-insensitive), the file must not be the main
  database file itself (``app`` for ``app.db``), and the name must be a plain file name: no
  separator, no ``..``, no drive or absolute path, so a widened policy can never address a file
  outside the tenant directory.

Both the session strategies (at every transaction begin) and the lifecycle functions call
:func:`check`, so a name that would reach the default schema is refused before any SQL or file
operation.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote
from urllib.parse import urlsplit

from .exc import InvalidSchemaName

__all__ = [
    "MYSQL_SYSTEM",
    "SQLITE_RESERVED",
    "check",
    "check_mysql",
    "check_sqlite_file",
    "check_sqlite_name",
    "sqlite_main_file",
]

MYSQL_SYSTEM = frozenset({"mysql", "sys", "performance_schema", "information_schema"})
SQLITE_RESERVED = frozenset({"main", "temp"})
_SEPARATORS = tuple({"/", "\\", os.sep, os.altsep or "/"})


def check_mysql(schema: str, default_database: str | None) -> str:
    """Refuse a MySQL/MariaDB tenant that is a system database or the URL's own database."""
    lowered = schema.lower()
    if lowered in MYSQL_SYSTEM:
        raise InvalidSchemaName(
            f"{schema!r} is a MySQL/MariaDB system database, never a tenant; choose another name"
        )
    if default_database is not None and lowered == default_database.lower():
        raise InvalidSchemaName(
            f"{schema!r} is the database the engine's URL connects to (the default database, "
            "which untranslated SQL reads); a tenant needs a database of its own"
        )
    return schema


def check_sqlite_name(schema: str) -> str:
    """Refuse SQLite's own schema names and anything that is not a plain file name."""
    if schema.lower() in SQLITE_RESERVED:
        raise InvalidSchemaName(
            f"{schema!r} is one of SQLite's own schema names (main, temp), never a tenant"
        )
    if (
        any(sep in schema for sep in _SEPARATORS)
        or schema in (".", "..")
        or Path(schema).name != schema
        or Path(schema).is_absolute()
        or (len(schema) > 1 and schema[1] == ":")  # a Windows drive
    ):
        raise InvalidSchemaName(
            f"SQLite tenant name {schema!r} is not a plain file name; it would address a file "
            "outside the tenant directory"
        )
    return schema


def sqlite_main_file(main_database: str | None) -> Path | None:
    """The main database file of a SQLite URL's ``database``; None if it is in memory.

    Understands SQLite's ``file:`` URIs (``sqlite:///file:data/app.db?uri=true``) as well as
    plain paths, so a URI cannot hide the main file from :func:`check_sqlite_file`.
    """
    if not main_database or main_database == ":memory:":
        return None
    if main_database.startswith("file:"):
        parts = urlsplit(main_database)
        if "mode=memory" in parts.query.split("&") or parts.path in ("", ":memory:"):
            return None
        return Path(unquote(parts.path))
    return Path(main_database)


def check_sqlite_file(schema: str, path: Path, main_database: str | None) -> str:
    """Refuse a SQLite tenant whose file would be the main database file."""
    check_sqlite_name(schema)
    main = sqlite_main_file(main_database)
    if main is not None:
        same = path.resolve() == main.resolve()
        if not same and path.exists() and main.exists():
            same = os.path.samefile(path, main)  # a case-insensitive file system, a link
        if same:
            raise InvalidSchemaName(
                f"the file of SQLite tenant {schema!r} ({path}) is the main database file; "
                "a tenant needs a file of its own (choose another name or directory)"
            )
    return schema


def check(dialect_name: str, schema: str, *, default_database: str | None) -> str:
    """Refuse ``schema`` where it names a default or system schema of ``dialect_name``.

    For SQLite only the name is checked here; the file itself is checked with
    :func:`check_sqlite_file` once the tenant directory is known.
    """
    if dialect_name in ("mysql", "mariadb"):
        return check_mysql(schema, default_database)
    if dialect_name == "sqlite":
        return check_sqlite_name(schema)
    return schema
