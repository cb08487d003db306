"""A throwaway PgBouncer in transaction pooling mode, for tests and benchmarks (private).

PgBouncer in ``pool_mode = transaction`` hands each *transaction* to whichever server
connection is free, so two clients take turns on one backend. Session state set outside a
transaction (a plain ``SET search_path``) then follows the backend, not the client: exactly
the leak sa_tenancy's transaction-scoped strategies avoid, and the leak tests want to see.

:class:`PgBouncer` writes a temporary configuration that forwards every database name to one
PostgreSQL server, listens on a free loopback port (no Unix socket), starts ``pgbouncer`` in
the foreground and stops it on :meth:`PgBouncer.stop`. PgBouncer refuses to run as root, so as
root it runs as the ``postgres`` user (like :class:`~sa_tenancy._cluster.Cluster`).

PgBouncer 1.18 does not track prepared statements in transaction mode: a statement prepared on
one backend is unknown on the next. Drivers must not reuse server-side prepared statements
across transactions: see :func:`engine_options`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import make_url

from ._cluster import free_port

__all__ = ["PgBouncer", "engine_options", "find_pgbouncer"]


def find_pgbouncer() -> str | None:
    """Path of the ``pgbouncer`` executable, or ``None``."""
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _asyncpg_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def engine_options(driver: str) -> dict[str, Any]:
    """``create_engine`` / ``create_async_engine`` keyword arguments for a driver behind PgBouncer.

    * ``psycopg`` (sync and async): ``connect_args={"prepare_threshold": None}``; otherwise
      psycopg prepares a statement after five uses and fails with "prepared statement
      ``_pg3_0`` already exists" on another backend.
    * ``asyncpg``: ``connect_args={"statement_cache_size": 0, "prepared_statement_cache_size":
      0, "prepared_statement_name_func": ...}`` (unique names). SQLAlchemy's asyncpg dialect
      prepares every statement; a statement cached from an earlier transaction is "does not
      exist" on the next backend, and a reused name "already exists".
    """
    if driver == "psycopg":
        return {"connect_args": {"prepare_threshold": None}}
    if driver == "asyncpg":
        return {
            "connect_args": {
                "statement_cache_size": 0,
                "prepared_statement_cache_size": 0,
                "prepared_statement_name_func": _asyncpg_statement_name,
            }
        }
    raise ValueError(f"no PgBouncer settings known for driver {driver!r}")


class PgBouncer:
    """One private PgBouncer in front of the PostgreSQL server of ``server_url``.

    :param server_url: a SQLAlchemy URL of the PostgreSQL server (any driver); its host, port,
        user and password are used for the backend connections.
    :param pool_size: server connections per database/user pair. Keep it below the number of
        clients so that transactions of different clients share backends.
    :param pool_mode: ``"transaction"`` (the point of this class), ``"session"`` or
        ``"statement"``.
    :param users: more roles allowed to log in through it (trust auth), besides the URL's.
    """

    def __init__(
        self,
        server_url: str,
        *,
        pool_size: int = 2,
        pool_mode: str = "transaction",
        users: tuple[str, ...] = (),
    ) -> None:
        executable = find_pgbouncer()
        if executable is None:
            raise FileNotFoundError("pgbouncer not found (install it: apt-get install pgbouncer)")
        self.executable = executable
        self.server = make_url(server_url)
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.users = users
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sa_tenancy_pgbouncer_"))
        self.logfile = self.root / "pgbouncer.log"
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, url: str | None = None) -> str:
        """``url`` (default: the server URL) with host and port pointing at this PgBouncer."""
        parsed = make_url(url) if url is not None else self.server
        return parsed.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def _config(self) -> str:
        host = self.server.host or "127.0.0.1"
        port = self.server.port or 5432
        return "\n".join(
            [
                "[databases]",
                f"* = host={host} port={port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                f"logfile = {self.logfile}",
                "auth_type = trust",
                f"auth_file = {self.root / 'userlist.txt'}",
                f"pool_mode = {self.pool_mode}",
                f"default_pool_size = {self.pool_size}",
                "min_pool_size = 0",
                "reserve_pool_size = 0",
                "max_client_conn = 1000",
                "ignore_startup_parameters = extra_float_digits,options",
                "server_reset_query =",
                "server_check_delay = 0",
                "",
            ]
        )

    def start(self) -> PgBouncer:
        """Write the configuration, start PgBouncer and wait until it accepts connections."""
        user = self.server.username or "postgres"
        password = self.server.password or ""
        quoted_password = str(password).replace('"', '""')
        others = "".join(f'"{u}" ""\n' for u in self.users)
        (self.root / "userlist.txt").write_text(f'"{user}" "{quoted_password}"\n' + others)
        config = self.root / "pgbouncer.ini"
        config.write_text(self._config())
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self.root, config, self.root / "userlist.txt"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self._process = subprocess.Popen(
            [self.executable, str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **kwargs,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = self.logfile.read_text() if self.logfile.exists() else ""
                self.stop()
                raise RuntimeError(f"pgbouncer exited at start-up: {log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("pgbouncer did not accept connections within 15 seconds")

    def stop(self) -> None:
        """Stop PgBouncer (every client connection is cut) and remove its directory."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
