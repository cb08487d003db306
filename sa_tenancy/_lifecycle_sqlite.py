"""Tenant lifecycle on SQLite: a tenant is a file marked by its header (private).

A tenant is the file ``<directory>/<name>.db`` (default directory: beside the main database
file, as for :class:`~sa_tenancy.SQLiteFiles`). Any ``*.db`` file can sit in that folder,
including the main database and files other programs own, so a file is a tenant only if
``create`` marked it: ``PRAGMA application_id`` is :data:`APPLICATION_ID`. That is SQLite's
own slot for "which application's file is this" (four bytes at offset 68 of the header), so the
mark

* is read without opening the file as a database (no lock, no journal, nothing created);
* travels with the file (copies, backups, renames);
* is invisible to the application's tables and to ``metadata.create_all``.

Listing, existence checks and drops consider marked files only; ``create`` never replaces a
file that exists, marked or not. A tenant file made by an older version of sa_tenancy has no
mark; mark it once with ``sqlite3 data/acme.db "PRAGMA application_id = 1935758446"``.

Namespaces: a tenant of a namespace other than the default also holds the one-row table
:data:`MARK_TABLE` (``mark`` = ``sa_tenancy:tenant:<namespace>``), written in the same
transaction as the header mark. A file without it is in the default namespace, so files made
before namespaces existed stay where they were. Checking a namespace opens the file read-only
(the header alone cannot hold a name); exclude the table from Alembic autogenerate as on MySQL.

:mod:`sa_tenancy.lifecycle` validates every name and checks that its file is not the main
database (:func:`sa_tenancy._dialect_names.check_sqlite_file`) before calling in here.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy import MetaData
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from ._dialect_names import sqlite_main_file
from ._namespace import namespace_of_mark
from ._tenant_tables import tenant_tables
from .exc import TenancyError

__all__ = [
    "APPLICATION_ID",
    "MARK_TABLE",
    "create",
    "directory_of",
    "drop",
    "is_marked",
    "list_marked",
    "make_directories",
    "tenant_path",
]

#: ``PRAGMA application_id`` of a tenant file: the ASCII bytes ``saTn``.
APPLICATION_ID = 0x7361546E
_MAGIC = b"SQLite format 3\x00"
_SIDECARS = ("-journal", "-wal", "-shm")
#: The table naming a tenant file's namespace (absent in the default namespace).
MARK_TABLE = "_sa_tenancy_tenant"


def directory_of(bind: Engine, directory: str | os.PathLike[str] | None) -> Path:
    """The folder of the tenant files: ``directory``, else the main database file's folder.

    The same rule as :func:`sa_tenancy.sqlite.tenant_file`, computed from the URL alone, so a
    name is checked before anything is opened.
    """
    if directory is not None:
        return Path(directory)
    main = bind.url.database
    if not main or main == ":memory:" or main.startswith("file:"):
        raise TenancyError(
            "an in-memory SQLite database has no directory for tenant files; "
            "pass SQLiteFiles(directory=...) / create_tenant(..., directory=...)"
        )
    return Path(main).resolve().parent


def tenant_path(bind: Engine, schema: str, directory: str | os.PathLike[str] | None) -> Path:
    """The file of tenant ``schema`` (whose name is already checked)."""
    return directory_of(bind, directory) / f"{schema}.db"


def is_marked(path: Path, namespace: str | None = None) -> bool:
    """Whether ``path`` is a SQLite file whose header carries :data:`APPLICATION_ID`.

    With ``namespace`` ('' for the default), also whether the tenant is of that namespace.
    """
    if namespace is not None:
        return is_marked(path) and _namespace_of(path) == namespace
    try:
        with path.open("rb") as file:
            header = file.read(72)
    except OSError:  # missing, a folder, unreadable: not a tenant
        return False
    return (
        len(header) == 72
        and header.startswith(_MAGIC)
        and int.from_bytes(header[68:72], "big") == APPLICATION_ID
    )


def make_directories(bind: Engine, directory: str | os.PathLike[str] | None) -> None:
    """Create the folder of the tenant files (and of a main database file beside them).

    SQLite creates a missing database file but not a missing folder; creating the first tenant
    is the natural moment to make it, so a fresh checkout runs without a set-up step.
    """
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
    main = sqlite_main_file(bind.url.database)
    if main is not None:
        main.resolve().parent.mkdir(parents=True, exist_ok=True)


def _namespace_of(path: Path) -> str | None:
    """The namespace named inside a marked file ('' if none), or None if it cannot be read."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MARK_TABLE,)
        ).fetchone():
            return ""
        row = conn.execute(f"SELECT mark FROM {MARK_TABLE}").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return namespace_of_mark(str(row[0])) if row else ""


def list_marked(
    bind: Engine, directory: str | os.PathLike[str] | None, namespace: str = ""
) -> list[str]:
    """Names of the marked ``*.db`` files of ``namespace`` in the tenant folder, sorted."""
    folder = directory_of(bind, directory)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".db")] for p in folder.glob("*.db") if is_marked(p, namespace))


def create(schema: str, path: Path, metadata: MetaData | None, namespace: str = "") -> None:
    """Build the tenant in a private file, then publish it under ``path`` without overwriting.

    :raises TenancyError: if ``path`` exists (a tenant or not): it is never replaced.
    """
    if path.exists() or path.is_symlink():
        raise _exists(schema, path)
    # A name only this call uses (not matching *.db): a user's file is never opened or removed.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{schema}.", suffix=".creating")
    os.close(fd)
    partial = Path(name)
    engine = create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(partial), poolclass=NullPool
    )
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
            if namespace:  # validated: letters, digits and underscores only
                conn.exec_driver_sql(f"CREATE TABLE {MARK_TABLE} (mark TEXT NOT NULL)")
                conn.exec_driver_sql(
                    f"INSERT INTO {MARK_TABLE} VALUES ('sa_tenancy:tenant:{namespace}')"
                )
            if metadata is not None:
                metadata.create_all(conn, tables=tenant_tables(metadata))
        engine.dispose()
        _publish(schema, partial, path)
    finally:
        engine.dispose()
        for leftover in (partial, *(Path(f"{partial}{s}") for s in _SIDECARS)):
            leftover.unlink(missing_ok=True)


def _publish(schema: str, partial: Path, path: Path) -> None:
    """Give the complete file its tenant name; fail, never overwrite, if the name is taken."""
    try:
        try:
            # A hard link is atomic and refuses an existing target (os.replace would replace
            # it): the tenant appears complete or not at all.
            os.link(partial, path)
        except FileExistsError:
            raise
        except OSError:
            # No hard links on this file system: claim the name exclusively, then copy.
            with path.open("xb") as target, partial.open("rb") as source:
                shutil.copyfileobj(source, target)
    except FileExistsError:
        raise _exists(schema, path) from None


def _exists(schema: str, path: Path) -> TenancyError:
    if is_marked(path):  # made by a concurrent create_tenant
        return TenancyError(f"tenant {schema!r} already exists")
    return TenancyError(
        f"{path} already exists and is not a tenant (no sa_tenancy mark), so {schema!r} cannot "
        "be created: create_tenant never overwrites a file; choose another name or directory"
    )


def drop(path: Path) -> None:
    """Delete a tenant file and SQLite's files beside it (a stale journal must not outlive it)."""
    path.unlink()
    for suffix in _SIDECARS:
        Path(f"{path}{suffix}").unlink(missing_ok=True)
