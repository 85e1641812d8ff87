"""A private PostgreSQL server for the tests: its own data directory and port, on 127.0.0.1.

``.ci/run`` installs Debian's ``postgresql`` package; this module finds its programs
(``/usr/lib/postgresql/*/bin`` or ``PATH``), makes a cluster in a temporary directory and
starts it. The server refuses to run as root, so as root the cluster belongs to the
``postgres`` user the package creates, and its programs run through ``runuser``.

Connections over TCP need the password (SCRAM), so the tests exercise the same
authentication a real deployment uses; ``database()`` makes a fresh database per test.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PASSWORD", "USER", "PostgresServer", "find_program"]

USER = "aegis"
PASSWORD = "pg-secret-4a7f"  # a test server's; checked to never appear in Aegis's output


def find_program(name: str) -> str | None:
    """The PostgreSQL server program ``name``, newest version first, else on PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return found[0] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One cluster, started by ``start`` and removed by ``stop``."""

    def __init__(self) -> None:
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="aegis-pg-"))
        self.data = self.root / "data"
        self._names = itertools.count(1)
        self._as_postgres = os.geteuid() == 0

    # ------------------------------------------------------------------ life

    def start(self) -> PostgresServer:
        initdb, pg_ctl = find_program("initdb"), find_program("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError(
                "PostgreSQL's server programs are not installed (Debian: apt-get install"
                " postgresql); .ci/run installs them"
            )
        self._pg_ctl = pg_ctl
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        self._run(
            initdb, "-D", str(self.data), "-U", USER, f"--pwfile={password_file}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
            "--no-sync", "--locale=C",
        )  # fmt: skip
        for _ in range(5):  # another process may take the free port before the server does
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=200"
            )
            log = self.root / "server.log"
            done = self._run(
                pg_ctl, "-D", str(self.data), "-o", options, "-l", str(log), "-w",
                "-t", "60", "start", check=False,
            )  # fmt: skip
            if done.returncode == 0:
                return self
        raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the server (fast: open connections are closed) and remove the cluster."""
        if self.data.exists():
            self._run(self._pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server, keeping its data (``resume`` starts it again on the same port)."""
        self._run(self._pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c max_connections=200"
        )
        self._run(
            self._pg_ctl, "-D", str(self.data), "-o", options,
            "-l", str(self.root / "server.log"), "-w", "start",
        )  # fmt: skip

    # ------------------------------------------------------------- databases

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database; its name comes back."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def drop(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser through the local socket; its output."""
        psql = find_program("psql")
        assert psql is not None, "psql is part of PostgreSQL's client package"
        done = self._run(
            psql, "-X", "-q", "-A", "-t", "-h", str(self.root), "-p", str(self.port),
            "-U", USER, "-d", database, "-v", "ON_ERROR_STOP=1", "-c", statement,
        )  # fmt: skip
        return done.stdout

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["runuser", "-u", "postgres", "--", *cmd] if self._as_postgres else list(cmd)
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=120, cwd=self.root
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:1])} failed: {done.stderr or done.stdout}")
        return done
