"""A throwaway PostgreSQL cluster for tests and fault-injection runs (private).

Started from ``initdb`` / ``pg_ctl`` found on ``PATH`` or under ``/usr/lib/postgresql``, on a free
loopback port, with its socket and data in a temporary directory, and removed on :meth:`stop`.
``initdb`` refuses to run as root, so as root the cluster runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["Cluster", "find_pg_bin", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None``."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = shutil.which("pg_ctl")
    if found:
        candidates.insert(0, str(Path(found).parent))
    for directory in candidates:
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    return None


class Cluster:
    """One private PostgreSQL server. ``start()``, use :attr:`url`, ``stop()``.

    :param settings: extra ``postgres -c`` settings, e.g. ``{"log_statement": "all"}``.
    """

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        bindir = find_pg_bin()
        if bindir is None:
            raise FileNotFoundError("no initdb/pg_ctl found (install the postgresql package)")
        self.bindir = bindir
        self.port = free_port()
        self.settings = dict(settings or {})
        self.root = Path(tempfile.mkdtemp(prefix="sa_tenancy_pg_"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> Cluster:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        if not self.datadir.exists():
            self._run(
                "initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8"
            )
        self.pg_ctl_start()
        return self

    def pg_ctl_start(self) -> None:
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.root}"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-o",
            " ".join(options),
            "start",
        )

    def restart(self, mode: str = "fast") -> None:
        """Stop and start the server; every client connection is cut."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")
        self.pg_ctl_start()

    def stop(self) -> None:
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
