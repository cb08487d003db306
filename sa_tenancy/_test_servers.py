"""Where the test servers come from, and each run's scratch database on them.

The pytest plugin (:mod:`sa_tenancy.testing`) asks this module for a server once per run and
kind: an explicit URL, else the local server, else (PostgreSQL) a throwaway ``initdb`` cluster,
else none, with a reason that says how to get one. On the server found it makes a scratch
database of its own, or works in place on a Citus coordinator (whose extension a new database
would not have), and drops it when the run ends. Kept apart from the plugin so that its hooks
and fixtures read as the user-facing story, and so the resolution order can be read in one place.
"""

from __future__ import annotations

import configparser
import os
import uuid
from dataclasses import dataclass
from dataclasses import field

import pytest
from sqlalchemy import create_engine
from sqlalchemy import make_url

from ._cluster import Cluster
from ._cluster import find_pg_bin

PG_ENV = "SA_TENANCY_TEST_PG_URL"
MYSQL_ENV = "SA_TENANCY_TEST_MYSQL_URL"
LOCAL_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOCAL_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/test"


def unique_name(prefix: str = "t") -> str:
    """A schema or database name no other test uses: ``prefix`` + 12 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def _answers(url: str) -> bool:
    args = {"connect_timeout": 3} if url.startswith(("postgresql", "mysql")) else {}
    engine = create_engine(url, connect_args=args, poolclass=None)
    try:
        with engine.connect():
            return True
    except Exception:
        return False
    finally:
        engine.dispose()


@dataclass
class _Server:
    """One resolved server: where it came from, its scratch database, and how to clean up."""

    kind: str
    admin_url: str | None = None
    url: str | None = None
    version: str = ""
    source: str = ""
    error: str | None = None
    scratch: str | None = None
    cluster: Cluster | None = None
    #: The citus extension's version when the configured database is a Citus coordinator.
    citus: str | None = None

    def require(self) -> str:
        if self.url is None:
            message = self.error or f"no {self.kind} server"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"{message} (CI=true: database tests must not be skipped)")
            pytest.skip(message)
        return self.url


def _setup_cfg_url(config: pytest.Config, name: str, default: str) -> str:
    """The URL named ``name`` in the ``[db]`` table of the project's setup.cfg, or ``default``."""
    parser = configparser.ConfigParser()
    parser.read(config.rootpath / "setup.cfg")
    return parser.get("db", name, fallback=default)


def _resolve_pg(config: pytest.Config) -> _Server:
    server = _Server("PostgreSQL")
    option = config.getoption("pg_url")
    explicit = option or os.environ.get(PG_ENV)
    local = _setup_cfg_url(config, "pg", LOCAL_PG)
    if explicit:
        server.admin_url, server.source = explicit, "--pg-url" if option else PG_ENV
    elif _answers(local):
        server.admin_url, server.source = local, "local server"
    elif find_pg_bin() is not None:
        try:
            server.cluster = Cluster().start()
        except Exception as exc:
            server.error = f"could not start a throwaway PostgreSQL cluster: {exc}"
            return server
        server.admin_url, server.source = server.cluster.url, "throwaway cluster"
    else:
        server.error = (
            f"no PostgreSQL: pass --pg-url, set {PG_ENV}, run a server on 127.0.0.1:5432, "
            "or install PostgreSQL (initdb/pg_ctl) so a throwaway cluster can be started"
        )
        return server
    _make_scratch(server, "SELECT version()")
    return server


def _resolve_mysql(config: pytest.Config) -> _Server:
    server = _Server("MySQL/MariaDB")
    option = config.getoption("mysql_url")
    explicit = option or os.environ.get(MYSQL_ENV)
    local = _setup_cfg_url(config, "mysql", LOCAL_MYSQL)
    if explicit:
        server.admin_url, server.source = explicit, "--mysql-url" if option else MYSQL_ENV
    elif _answers(local):
        server.admin_url, server.source = local, "local server"
    else:
        server.error = (
            f"no MySQL/MariaDB: pass --mysql-url, set {MYSQL_ENV}, or run a server on "
            "127.0.0.1:3306 (user root, empty password, database test)"
        )
        return server
    _make_scratch(server, "SELECT version()")
    return server


_CITUS_SQL = "SELECT extversion FROM pg_extension WHERE extname = 'citus'"


def _make_scratch(server: _Server, version_sql: str) -> None:
    assert server.admin_url is not None
    engine = create_engine(server.admin_url, isolation_level="AUTOCOMMIT")
    name = unique_name("sa_tenancy_test")
    try:
        with engine.connect() as conn:
            server.version = str(conn.exec_driver_sql(version_sql).scalar())
            if conn.dialect.name == "postgresql":
                server.citus = conn.exec_driver_sql(_CITUS_SQL).scalar()
            if server.citus is not None:
                # In place: a scratch database would have no citus extension at all.
                server.url = server.admin_url
                return
            try:
                quoted = conn.dialect.identifier_preparer.quote_identifier(name)
                conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
            except Exception:
                server.url = server.admin_url  # no CREATEDB: work in the given database
                return
        server.scratch = name
        server.url = (
            make_url(server.admin_url).set(database=name).render_as_string(hide_password=False)
        )
    except Exception as exc:
        server.error = f"{server.kind} at {server.admin_url} failed: {exc}"
    finally:
        engine.dispose()


def _drop_scratch(server: _Server) -> None:
    if server.scratch and server.admin_url:
        engine = create_engine(server.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                quoted = conn.dialect.identifier_preparer.quote_identifier(server.scratch)
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
        finally:
            engine.dispose()
    if server.cluster is not None:
        server.cluster.stop()


@dataclass
class _Servers:
    config: pytest.Config
    resolved: dict[str, _Server] = field(default_factory=dict)

    def get(self, kind: str) -> _Server:
        if kind not in self.resolved:
            if kind == "pg":
                self.resolved[kind] = _resolve_pg(self.config)
            else:
                self.resolved[kind] = _resolve_mysql(self.config)
        return self.resolved[kind]

    def close(self) -> None:
        for server in self.resolved.values():
            _drop_scratch(server)
