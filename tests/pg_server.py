"""A throwaway PostgreSQL 15 server on 127.0.0.1 for tests: initdb, start, stop by PID."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> str | None:
    """None when a server can be started here, else the reason it cannot."""
    if not (BIN / "initdb").exists():
        return "PostgreSQL 15 is not installed (apt-get install postgresql)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` user to run the server as"
    return None


class PostgresServer:
    """``with PostgresServer() as pg: pg.url`` — a fresh cluster with database ``oialr``."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="oialr-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/oialr"

    def _as_postgres(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        user = pwd.getpwnam("postgres")

        def demote():
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

        run_as = demote if os.geteuid() == 0 else None
        return subprocess.run(cmd, preexec_fn=run_as, capture_output=True, text=True, check=check,
                              cwd=self.dir)  # fmt: skip

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                          "--auth=trust", "-E", "UTF8")  # fmt: skip
        self.restart_server()
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE oialr")
        return self

    def restart_server(self) -> None:
        """Start (again) on the same port; only loopback is listened on."""
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir}"
        self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-t", "60",
                          "-l", str(self.dir / "log"), "start")  # fmt: skip
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start: " + (self.dir / "log").read_text()[-2000:])

    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n")[0])

    def stop_server(self) -> None:
        """Stop by PID (fast shutdown), waiting until it is gone."""
        pid = self.pid()
        os.kill(pid, 2)  # SIGINT: PostgreSQL's fast shutdown
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop_server()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
